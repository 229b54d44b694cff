"""What the machine has (geoddu.hardware): this machine's real /proc/cpuinfo, and the files of
CPUs without bf16 (an AVX2 laptop, an AVX-VNNI desktop) and of an Arm server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from geoddu.hardware import NO, UNKNOWN, YES, cpu_facts, machine, parse_cpuinfo
from geoddu.precision_probe import candidates
from geoddu.version import __version__

CPUINFO = Path("/proc/cpuinfo")

# An Intel Core i7-8550U (Kaby Lake R): 4 cores, 8 threads, AVX2, no AVX-512, no VNNI.
KABY_LAKE_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi "
    "mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art arch_perfmon "
    "pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 monitor "
    "ds_cpl vmx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt "
    "aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb invpcid_single pti "
    "fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid mpx rdseed adx smap clflushopt "
    "intel_pt xsaveopt xsavec xgetbv1 xsaves dtherm ida arat pln pts hwp md_clear flush_l1d")


def _x86(model: str, flags: str, cores: int, threads_per_core: int) -> str:
    blocks = []
    for n in range(cores * threads_per_core):
        blocks.append(
            f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n"
            f"model name\t: {model}\nphysical id\t: 0\nsiblings\t: {cores * threads_per_core}\n"
            f"core id\t\t: {n % cores}\ncpu cores\t: {cores}\nflags\t\t: {flags}\n")
    return "\n".join(blocks) + "\n"


KABY_LAKE = _x86("Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz", KABY_LAKE_FLAGS, 4, 2)
# An Alder Lake desktop: AVX-VNNI (int8) but no bf16 instructions; 6 cores, 12 threads.
ALDER_LAKE = _x86("12th Gen Intel(R) Core(TM) i5-12600", KABY_LAKE_FLAGS + " avx_vnni", 6, 2)
# A Neoverse-V1 server (AWS Graviton3): Arm hwcaps, no core ids.
GRAVITON3 = "\n".join(
    f"processor\t: {n}\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
    "crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp "
    "sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm "
    "bf16 dgh rng\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
    for n in range(4))


def test_a_cpu_without_bf16_says_no_and_auto_does_not_measure_it():
    cpu = cpu_facts(KABY_LAKE)
    assert cpu.model == "Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz"
    assert (cpu.physical_cores, cpu.logical_threads) == (4, 8)
    assert (cpu.bf16, cpu.bf16_flags) == (NO, ())
    assert (cpu.int8, cpu.int8_flags) == (NO, ())
    assert cpu.flags_from == "/proc/cpuinfo"
    measured, skipped = candidates(torch.device("cpu"), cpu)
    assert measured == ["fp32"]
    assert "no bf16 instructions" in skipped["bf16"] and "fp16" in skipped


def test_avx_vnni_is_int8_without_bf16():
    cpu = cpu_facts(ALDER_LAKE)
    assert (cpu.physical_cores, cpu.logical_threads) == (6, 12)
    assert (cpu.bf16, cpu.int8, cpu.int8_flags) == (NO, YES, ("avx_vnni",))


def test_arm_features_line():
    cpu = cpu_facts(GRAVITON3)
    assert cpu.logical_threads == 4
    assert (cpu.bf16, cpu.bf16_flags) == (YES, ("bf16", "svebf16"))
    assert (cpu.int8, cpu.int8_flags) == (YES, ("asimddp", "i8mm"))
    assert candidates(torch.device("cpu"), cpu)[0] == ["fp32", "bf16"]


def test_a_flag_only_some_processors_have_does_not_count():
    """A heterogeneous or odd machine: only flags every processor lists are support."""
    blocks = parse_cpuinfo(ALDER_LAKE)
    assert len(blocks) == 12
    text = ALDER_LAKE.replace(" avx_vnni\n", "\n", 1)  # processor 0 lacks it
    assert cpu_facts(text).int8 == NO


def test_without_cpuinfo_support_is_unknown_not_guessed():
    cpu = cpu_facts(None)
    assert (cpu.bf16, cpu.int8, cpu.flags_from) == (UNKNOWN, UNKNOWN, "")
    assert cpu.logical_threads == os.cpu_count()
    # Unknown support is measured, never assumed absent.
    assert candidates(torch.device("cpu"), cpu)[0] == ["fp32", "bf16"]


@pytest.mark.skipif(not CPUINFO.exists(), reason="needs Linux's /proc/cpuinfo")
def test_this_machines_cpuinfo():
    text = CPUINFO.read_text()
    facts = machine()
    cpu = facts.cpu
    flags = set(next(line for line in text.splitlines()
                     if line.startswith(("flags", "Features"))).split(":", 1)[1].split())
    assert cpu.flags_from == "/proc/cpuinfo"
    assert cpu.bf16 == (YES if flags & {"avx512_bf16", "amx_bf16", "bf16", "svebf16"} else NO)
    assert set(cpu.bf16_flags) <= flags and set(cpu.int8_flags) <= flags
    assert cpu.logical_threads == text.count("\nprocessor") + text.startswith("processor")
    assert 1 <= cpu.physical_cores <= cpu.logical_threads
    assert cpu.usable_threads == len(os.sched_getaffinity(0))
    assert cpu.torch_threads == torch.get_num_threads()
    assert cpu.torch_capability == torch.backends.cpu.get_cpu_capability()
    assert cpu.model in text
    # The rest of the machine, and all of it as JSON.
    assert (facts.geoddu, facts.torch, facts.torch_cuda) == (
        __version__, torch.__version__, torch.version.cuda)
    assert len(facts.cuda) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert facts.python == "{}.{}.{}".format(*sys.version_info[:3])
    data = json.loads(json.dumps(facts.to_dict()))
    assert data["cpu"]["bf16_flags"] == list(cpu.bf16_flags)
    if torch.version.cuda is None:
        assert "CPU build" in data["notes"][0]
