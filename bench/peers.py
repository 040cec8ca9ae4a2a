"""The serving benchmarks' peers, built or installed once into a cache directory (never at test time).

- llama.cpp's own tools (`llama-server`, `llama-batched-bench`, `llama-quantize`), compiled with cmake from the
  llama.cpp source vendored in the sdist of the llama-cpp-python release installed here, so greenlm's engine
  and its peer run the same llama.cpp. About 10 minutes on 2 cores, once.
- GuideLLM (the load tool vLLM's users know) in a virtual environment of its own: its dependencies clash with
  ours, and torch goes in first, pinned, so pip does not fetch a CUDA build.

Cache: $GREENLM_BENCH_CACHE, default ~/.cache/greenlm-bench.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path

from benchlib import log

GUIDELLM_VERSION = "0.8.1"
TORCH_PIN = "torch==2.13.0"  # the CPU wheel; an open range pulls a multi-GB CUDA build
LLAMA_TARGETS = ("llama-server", "llama-batched-bench", "llama-quantize")
# the wheel's own build: Release, native CPU (GGML_NATIVE defaults on); no network client, no TLS
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
)


def cache_dir() -> Path:
    path = Path(os.environ.get("GREENLM_BENCH_CACHE", Path.home() / ".cache" / "greenlm-bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], what: str, **kwargs) -> None:
    log(f"{what}: {' '.join(cmd)}")
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")


def llama_cpp_source() -> Path:
    """The llama.cpp source tree the installed llama-cpp-python wheel was built from (its sdist's vendor/)."""
    release = version("llama_cpp_python")
    root = cache_dir() / f"llama_cpp_python-{release}"
    source = root / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    sdists = cache_dir() / "sdist"
    sdist = sdists / f"llama_cpp_python-{release}.tar.gz"
    if not sdist.exists():
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q",
             f"llama-cpp-python=={release}", "-d", str(sdists)],
            "downloading the llama-cpp-python sdist",
        )  # fmt: skip
    with tarfile.open(sdist) as archive:
        archive.extractall(cache_dir(), filter="data")
    if not (source / "CMakeLists.txt").exists():
        raise SystemExit(f"{sdist} holds no vendor/llama.cpp source")
    return source


def llama_tools() -> dict[str, Path]:
    """Paths of llama.cpp's own binaries, built once from the wheel's source."""
    source = llama_cpp_source()
    build = source / "build"
    tools = {name: build / "bin" / name for name in LLAMA_TARGETS}
    if all(p.exists() for p in tools.values()):
        return tools
    if shutil.which("cmake") is None:
        raise SystemExit(
            "cmake is not installed: install cmake and a C/C++ compiler, or pass --llama-server PATH"
        )
    _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], "configuring llama.cpp")
    jobs = str(os.cpu_count() or 2)
    _run(
        ["cmake", "--build", str(build), "-j", jobs, "--target", *LLAMA_TARGETS], "building llama.cpp's tools"
    )
    return tools


def llama_build_info() -> dict:
    return {
        "source": f"llama-cpp-python {version('llama_cpp_python')} sdist, vendor/llama.cpp",
        "cmake_flags": list(CMAKE_FLAGS),
    }


def guidellm() -> Path:
    """The guidellm command, installed once into a virtual environment of its own."""
    venv = cache_dir() / f"guidellm-{GUIDELLM_VERSION}"
    command = venv / "bin" / "guidellm"
    if command.exists():
        return command
    _run([sys.executable, "-m", "venv", str(venv)], "creating GuideLLM's venv")
    pip = str(venv / "bin" / "pip")
    _run([pip, "install", "-q", TORCH_PIN], "installing torch (CPU) for GuideLLM")
    _run([pip, "install", "-q", f"guidellm=={GUIDELLM_VERSION}"], "installing GuideLLM")
    return command
