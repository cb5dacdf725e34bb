import json
import os
import sys
from pathlib import Path

import pytest
import torch

from gradsim_utils import provenance

CPUINFO = Path("/proc/cpuinfo")
needs_cpuinfo = pytest.mark.skipif(not CPUINFO.is_file(), reason="no /proc/cpuinfo (not Linux)")

# Excerpts of real build reports: torch 2.14.1 from PyPI (MKL, oneDNN) and a Debian-style OpenBLAS build
# without oneDNN.
MKL_CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - LAPACK is enabled (usually provided by MKL)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, TORCH_VERSION=2.14.1, USE_MKLDNN=ON,
"""
MKL_PARALLEL = """ATen/Parallel:
\tat::get_num_threads() : 2
\tat::get_num_interop_threads() : 2
ATen parallel backend: OpenMP
"""
OPENBLAS_CONFIG = """PyTorch built with:
  - GCC 12.2
  - CPU capability usage: AVX2
  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release, LAPACK_INFO=open, USE_MKLDNN=OFF, USE_OPENMP=OFF,
"""
AMD_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse sse2 avx avx2 fma avx512_bf16x
bogomips\t: 4900.00

processor\t: 1
vendor_id\t: SomeoneElse
model name\t: Not The First
flags\t\t: avx512f
"""


def test_git_commit_of_this_checkout_and_outside_one(tmp_path):
    here = provenance.git_commit()
    assert here["sha"] == "unknown" or (len(here["sha"]) == 40 and here["short"] == here["sha"][:10])
    assert provenance.git_commit(tmp_path) == {"sha": "unknown", "short": "unknown", "dirty": False}


def test_package_versions_and_machine():
    versions = provenance.package_versions(("torch", "surely-not-a-package-xyz"))
    assert versions["torch"][0].isdigit() and versions["surely-not-a-package-xyz"] == "not installed"
    machine = provenance.machine_description()
    assert machine["logical CPUs"] >= 1 and machine["memory (GiB)"] > 0


def test_stage_timer_adds_up_repeated_stages(capsys):
    timer = provenance.StageTimer()
    for _ in range(2):
        with timer("stage"):
            pass
    assert list(timer.seconds) == ["stage"] and timer.seconds["stage"] >= 0
    assert capsys.readouterr().out.count("[time] stage:") == 2


def test_machine_description_records_what_can_change_a_float():
    machine = provenance.machine_description("cpu")
    for key in ("CPU model", "CPU vendor", "AVX2", "AVX-512F", "torch CPU capability", "ONEDNN_MAX_CPU_ISA",
                "torch", "oneDNN", "MKL", "BLAS", "LAPACK", "OpenMP", "parallel backend", "intra-op threads",
                "inter-op threads", "OMP_NUM_THREADS", "device", "GPU"):
        assert key in machine, key
    assert machine["torch CPU capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["intra-op threads"] == torch.get_num_threads()
    assert machine["inter-op threads"] == torch.get_num_interop_threads()
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu"
    assert machine["AVX2"] in ("yes", "no", "unknown") and machine["AVX-512F"] in ("yes", "no", "unknown")
    assert machine["ONEDNN_MAX_CPU_ISA"] == os.environ.get("ONEDNN_MAX_CPU_ISA", "not set")
    # oneDNN is reported exactly when torch has it.
    assert (machine["oneDNN"] == "not built") == (not torch.backends.mkldnn.is_available())
    assert all(isinstance(v, (str, int, float)) for v in machine.values())


@needs_cpuinfo
def test_cpu_model_and_flags_agree_with_proc_cpuinfo():
    lines = CPUINFO.read_text().splitlines()
    model_lines = [line for line in lines if line.startswith("model name")]
    flag_lines = [line for line in lines if line.startswith("flags")]
    cpu = provenance.cpu_description()
    if model_lines:
        assert cpu["model"] == model_lines[0].split(":", 1)[1].strip()
        assert provenance.machine_description()["CPU model"] == cpu["model"]
        assert provenance.training_machine()["cpu"] == cpu["model"]
    if flag_lines:
        flags = flag_lines[0].split(":", 1)[1].split()
        assert cpu["avx512f"] is ("avx512f" in flags) and cpu["avx2"] is ("avx2" in flags)
        assert provenance.machine_description()["AVX-512F"] == ("yes" if "avx512f" in flags else "no")
        # torch dispatches to AVX-512 kernels only on a CPU with the avx512f flag.
        if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            assert "avx512f" in flags


def test_cpu_description_reads_the_first_processor_of_a_file(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(AMD_CPUINFO)
    # avx512_bf16x is not avx512f: flags match whole words.
    assert provenance.cpu_description(path) == {"model": "AMD EPYC 7B13", "vendor": "AuthenticAMD",
                                                "avx2": True, "avx512f": False}
    missing = provenance.cpu_description(tmp_path / "absent")
    assert missing["vendor"] == "unknown" and missing["avx2"] is None and missing["avx512f"] is None
    assert isinstance(missing["model"], str) and missing["model"]


def test_torch_build_parses_mkl_and_openblas_builds():
    mkl = provenance.torch_build(MKL_CONFIG, MKL_PARALLEL)
    assert mkl["oneDNN"] == "3.12.0 (80afa710)" and mkl["MKL"] == "2024.2"
    assert mkl["BLAS"] == "mkl" and mkl["LAPACK"] == "mkl"
    assert mkl["OpenMP"] == "4.5" and mkl["parallel backend"] == "OpenMP"
    openblas = provenance.torch_build(OPENBLAS_CONFIG, "ATen parallel backend: native thread pool\n")
    assert openblas["oneDNN"] == "not built" and openblas["MKL"] == "not built"
    assert openblas["BLAS"] == "open" and openblas["LAPACK"] == "open"
    assert openblas["OpenMP"] == "not used" and openblas["parallel backend"] == "native thread pool"
    here = provenance.torch_build()
    assert here["torch"] == torch.__version__
    assert here["CPU capability"] == torch.backends.cpu.get_cpu_capability()
    assert all(isinstance(v, str) and v for v in here.values())


def test_training_machine_round_trips_through_torch_save_and_json(tmp_path):
    machine = provenance.training_machine("cpu")
    assert set(machine) == {"cpu", "isa", "onednn", "blas", "torch", "threads", "device"}
    assert machine["threads"] == torch.get_num_threads() and machine["device"] == "cpu"
    assert machine["isa"].startswith(torch.backends.cpu.get_cpu_capability())
    assert machine["torch"] == torch.__version__
    assert all(type(v) in (str, int) for v in machine.values())
    torch.save({"metrics": {"accuracy": 0.9, "machine": machine}}, tmp_path / "model.pt")
    assert torch.load(tmp_path / "model.pt", weights_only=True)["metrics"]["machine"] == machine
    assert json.loads(json.dumps(machine)) == machine


def test_training_machine_names_a_onednn_cap(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    machine = provenance.training_machine("cpu")
    assert machine["isa"] == f"{torch.backends.cpu.get_cpu_capability()} (ONEDNN_MAX_CPU_ISA=AVX2)"
    assert provenance.machine_description("cpu")["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_describe_machine_is_one_line_with_isa_and_threads():
    machine = provenance.training_machine("cpu")
    line = provenance.describe_machine(machine)
    assert "\n" not in line
    assert machine["isa"] in line and f"{machine['threads']} thread" in line
    assert f"torch {torch.__version__}" in line and line.endswith("· cpu")
    example = {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "isa": "AVX512", "onednn": "3.12.0",
               "blas": "mkl", "torch": "2.14.1", "threads": 1, "device": "cpu"}
    assert provenance.describe_machine(example) == \
        "Intel Xeon Platinum 8481C CPU @ 2.70GHz · AVX512 · torch 2.14.1 · 1 thread · cpu"
    assert provenance.describe_machine(None) == provenance.describe_machine({}) == "machine not recorded"


@pytest.mark.parametrize("capability, machine, expected", [
    ("AVX512", "x86_64", ("avx2", "AVX2")), ("AVX2", "x86_64", ("default", "SSE41")),
    ("DEFAULT", "x86_64", None), ("SVE256", "aarch64", ("default", None)), ("DEFAULT", "aarch64", None),
])
def test_lower_isa_is_one_step_down(capability, machine, expected):
    assert provenance._lower_isa(capability, machine) == expected


def test_isa_sensitivity_rerun_is_bit_identical_and_a_lower_isa_moves_the_last_bits():
    result = provenance.isa_sensitivity(steps=(1, 5))
    assert result["steps"] == [1, 5] and result["isa"] == torch.backends.cpu.get_cpu_capability()
    assert result["rerun_identical"] is True
    assert len(result["loss"]) == 2 and all(0 < v < 10 for v in result["loss"])
    if result["lower_isa"] is None:
        pytest.skip(f"no vector ISA below {result['isa']} known on {sys.platform}")
    assert result["lower_isa"] != result["isa"]
    # Another ISA changes bits but, after one step, only in the last digits of float32.
    assert all(0 <= f <= 1 for f in result["fraction_differing"])
    assert all((r == 0) == (f == 0) for r, f in zip(result["relative_difference"], result["fraction_differing"]))
    assert result["relative_difference"][0] < 1e-5
    assert abs(result["loss_lower"][0] - result["loss"][0]) <= 1e-5 * abs(result["loss"][0])


def test_isa_sensitivity_rejects_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        provenance.isa_sensitivity(steps=(0, 3))
