"""llama.cpp's own tools, the anchors of the concurrency benchmarks (not app dependencies):
`llama-server` and `llama-batched-bench` (batched decoding with nothing around it: the ceiling).

Built once, cached, with CMake from the llama.cpp source that the llama-cpp-python source
release vendors (the same llama.cpp the app runs); llama-server is then started on loopback with
`--parallel N` on the benchmark's GGUF.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import free_port, stop
from synth.standin import CACHE_DIR

# GCC 12's AMX intrinsic fixed (docs/amx.md): force-included, as `make` builds llama-cpp-python
AMX_FIX = Path(__file__).resolve().parents[1] / "native" / "amx-tilecfg-fix.h"
SDIST_DIR = CACHE_DIR / "sdist"  # once per machine, for every clone (TUTOR_CACHE)


def _version() -> str:
    return importlib.metadata.version("llama-cpp-python")


TOOLS = ("llama-server", "llama-batched-bench")  # built together: one compile of ggml


def tool_path(tool: str) -> Path:
    return CACHE_DIR / f"llama.cpp-{_version()}-amx-fix" / tool


def binary_path() -> Path:
    return tool_path("llama-server")


def source_release() -> Path:
    """llama-cpp-python's source release, llama.cpp vendored in it: downloaded from PyPI once."""
    name = f"llama_cpp_python-{_version()}.tar.gz"
    if not (SDIST_DIR / name).is_file():
        SDIST_DIR.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=SDIST_DIR) as tmp:  # then renamed: never half a file
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={_version()}",
                    "-d",
                    tmp,
                ],
                check=True,
            )
            (Path(tmp) / name).rename(SDIST_DIR / name)
    return SDIST_DIR / name


def extract_llama_cpp(dest: Path, wanted: Callable[[str], bool] = lambda name: True) -> Path:
    """The llama.cpp tree vendored in the source release, its files WANTED (by path), in DEST."""
    with tarfile.open(source_release()) as sdist:
        members = [
            m
            for m in sdist.getmembers()
            if "/vendor/llama.cpp/" in m.name
            and (m.isfile() or m.isdir())
            and not m.name.startswith("/")
            and ".." not in m.name.split("/")
            and wanted(m.name)
        ]
        # Python 3.11.4+ also checks every member itself; Debian 12's 3.11.2 has no such filter.
        checked = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        sdist.extractall(dest, members=members, **checked)
    return next(dest.glob("*/vendor/llama.cpp"))


def build(tool: str = "llama-server") -> Path:
    """The cached binary of TOOL (one of TOOLS), all of them built on first use (~12 min on 2
    cores)."""
    target = tool_path(tool)
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        source = extract_llama_cpp(Path(tmp))
        build_dir = source / "build"
        target.parent.mkdir(parents=True, exist_ok=True)
        log = target.parent / "build.log"  # the compiler's warnings run to megabytes
        print(f"building {', '.join(TOOLS)} once (~12 min on 2 cores; log: {log}) …", flush=True)
        with open(log, "w") as out:
            for command in (
                [
                    "cmake",
                    "-S",
                    str(source),
                    "-B",
                    str(build_dir),
                    "-DLLAMA_CURL=OFF",
                    "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=OFF",
                    "-DLLAMA_BUILD_TESTS=OFF",
                    f"-DCMAKE_C_FLAGS=-include{AMX_FIX}",
                    f"-DCMAKE_CXX_FLAGS=-include{AMX_FIX}",
                ],
                [
                    "cmake",
                    "--build",
                    str(build_dir),
                    "--target",
                    *TOOLS,
                    "-j",
                    str(os.cpu_count() or 2),
                ],
            ):
                if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                    raise RuntimeError(f"building {', '.join(TOOLS)} failed; see {log}")
        for name in TOOLS:  # each copied whole, then renamed: never half a binary
            tmp_target = tool_path(name).with_suffix(".tmp")
            shutil.copy2(build_dir / "bin" / name, tmp_target)
            tmp_target.rename(tool_path(name))
    return target


def loopback_command(binary: Path, model: Path, port: int, *flags: str) -> list[str]:
    """llama-server serving MODEL on 127.0.0.1:PORT, without its web page, with FLAGS."""
    return [
        str(binary),
        "-m",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
        *flags,
    ]


@contextmanager
def running(
    model: Path, parallel: int, kv_tokens: int, threads: int, log: Path, *extra: str
) -> Iterator[str]:
    """Start `llama-server --parallel PARALLEL [EXTRA]` on MODEL; yield its root URL once
    healthy."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            loopback_command(
                build(),
                model,
                port,
                "--parallel",
                str(parallel),
                "-c",
                str(kv_tokens),
                "-t",
                str(threads),
                "-tb",
                str(threads),
                "--load-mode",
                "none",
                "--kv-unified",
                *extra,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {proc.returncode}; see {log}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"llama-server did not become healthy; see {log}")
                time.sleep(0.3)
            yield url
        finally:
            stop(proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.llama_server",
        description="Build llama.cpp's llama-server and llama-batched-bench once (~12 min on 2 "
        "cores) and print their paths.",
    )
    parser.add_argument(
        "--source-only",
        action="store_true",
        help="only fetch llama-cpp-python's source release (llama.cpp's "
        "reference converter is in it) and print its path",
    )
    args = parser.parse_args(argv)
    if args.source_only:
        print(source_release())
    else:
        print("\n".join(str(build(tool)) for tool in TOOLS))


if __name__ == "__main__":
    main()
