"""The native library is loaded only from where no other user could have written it (issue 10).

Each case runs in a subprocess with its own ``TMPDIR`` and ``ACCEL_JAX_CACHE_DIR``.
Its compiler (``CXX``) is a script that logs each call and "compiles" by copying
a library built once for this module, so builds cost no compile time and are
counted. A planted library has a constructor that creates a marker file, so a
library that must never run is seen if it runs.
"""

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import accel_jax as aj
from accel_jax import _native, fused
from tests.problems import layer_like_params, random_grads

PLANTED_CC = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void planted() {
  const char* path = getenv("AJ_TEST_PLANTED");
  if (path) close(open(path, O_CREAT | O_WRONLY, 0600));
}
extern "C" void accel_jax_adam_f32() {}
extern "C" void accel_jax_momentum_f32() {}
extern "C" void accel_jax_rms_f32() {}
"""

FAKE_CXX = """#!/bin/sh
echo "$*" >> "$AJ_TEST_CXX_LOG"
sleep "${AJ_TEST_CXX_SLEEP:-0}"
[ -n "$AJ_TEST_CXX_FAIL" ] && exit 1
out=""; previous=""
for arg in "$@"; do [ "$previous" = "-o" ] && out="$arg"; previous="$arg"; done
exec cp "$AJ_TEST_BUILT" "$out"
"""

SCRIPT = "import accel_jax as aj\nprint(aj.native_available())\nprint(aj.native_status())\n"

# A uid without a passwd entry and without HOME: "~" does not expand.
NO_HOME = "import pwd\npwd.getpwuid = lambda uid: (_ for _ in ()).throw(KeyError(uid))\n"


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """One real build (the library the fake compiler copies) and a planted library."""
    if not aj.native_available():
        pytest.skip(f"the native kernels are not available: {aj.native_status()}")
    root = tmp_path_factory.mktemp("native_trust")
    compiler = _native._compiler()
    seed = root / "seed"
    seed.mkdir(mode=0o700)
    built = seed / _native._library_name(compiler)
    notes = []
    assert _native._ensure(compiler, built, notes) and not notes
    (root / "planted.cc").write_text(PLANTED_CC)
    planted = root / "planted.so"
    cmd = [compiler, "-shared", "-fPIC", str(root / "planted.cc"), "-o", str(planted)]
    subprocess.run(cmd, check=True, capture_output=True)
    cxx = root / "cxx"
    cxx.write_text(FAKE_CXX)
    cxx.chmod(0o755)
    return types.SimpleNamespace(
        compiler=compiler, built=built, planted=planted, cxx=str(cxx),
        name=_native._library_name(str(cxx)),
    )


def _env(kit, tmp_path, cache, **extra):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ACCEL_JAX_NATIVE"}
    env.update(
        TMPDIR=str(tmp_path / "tmp"), CXX=kit.cxx, AJ_TEST_CXX_LOG=str(tmp_path / "cxx.log"),
        AJ_TEST_BUILT=str(kit.built), AJ_TEST_PLANTED=str(tmp_path / "planted-ran"),
        ACCEL_JAX_CACHE_DIR=str(cache),
    )
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _start(kit, tmp_path, cache, prelude="", cwd=None, **extra):
    return subprocess.Popen(
        [sys.executable, "-c", prelude + SCRIPT], env=_env(kit, tmp_path, cache, **extra),
        cwd=cwd or tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process, tmp_path):
    out, err = process.communicate(timeout=120)
    # A crash (SIGBUS from a truncated library: -7) fails here.
    assert process.returncode == 0, err[-3000:]
    available, status = out.splitlines()[-2:]
    log = tmp_path / "cxx.log"
    return types.SimpleNamespace(
        available=available == "True", status=status,
        builds=log.read_text().splitlines() if log.exists() else [],
        planted_ran=(tmp_path / "planted-ran").exists(),
    )


def _run(kit, tmp_path, cache, **kwargs):
    return _finish(_start(kit, tmp_path, cache, **kwargs), tmp_path)


def _plant(kit, folder, source, digest_of=None):
    """``source`` as the cached library in ``folder``, with the SHA-256 of ``digest_of``."""
    folder.mkdir(mode=0o700, exist_ok=True)
    library = folder / kit.name
    shutil.copyfile(source, library)
    library.chmod(0o700)
    if digest_of is not False:
        digest = hashlib.sha256((digest_of or source).read_bytes()).hexdigest()
        (folder / (kit.name + ".sha256")).write_text(digest + "\n")
    return library


def _built_elsewhere(result, folder):
    """It built once, outside ``folder``, and loaded that build."""
    assert result.available, result.status
    assert len(result.builds) == 1
    assert str(folder) not in result.builds[0] and "private temporary folder" in result.status


def test_a_build_leaves_the_library_its_hash_and_the_lock(kit):
    folder = kit.built.parent
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".lock", kit.built.name, kit.built.name + ".sha256"]  # no temporary files
    digest = (folder / (kit.built.name + ".sha256")).read_text().strip()
    assert digest == hashlib.sha256(kit.built.read_bytes()).hexdigest()
    mtime = kit.built.stat().st_mtime_ns
    assert not _native._ensure(kit.compiler, kit.built, [])  # cached: nothing rebuilt
    assert kit.built.stat().st_mtime_ns == mtime


def test_the_library_name_is_keyed_by_the_source(tmp_path, monkeypatch):
    name = _native._library_name("c++")
    source = tmp_path / "changed.cc"
    source.write_text(_native.SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(_native, "SOURCE", source)
    assert _native._library_name("c++") != name


def test_a_folder_writable_by_others_is_refused(kit, tmp_path):
    cache = tmp_path / "cache"
    _plant(kit, cache, kit.planted)
    cache.chmod(0o777)
    result = _run(kit, tmp_path, cache)
    assert not result.planted_ran
    assert f"ACCEL_JAX_CACHE_DIR refused: {cache} is writable by group or others (mode 0o777)" in (
        result.status)
    _built_elsewhere(result, cache)
    assert not list((tmp_path / "tmp").glob("accel_jax-*"))  # the private folder is removed


def test_an_unusable_cache_dir_is_reported_not_ignored(kit, tmp_path):
    cache = tmp_path / "a-file"
    cache.write_text("not a folder")
    result = _run(kit, tmp_path, cache)
    assert "ACCEL_JAX_CACHE_DIR refused: [Errno 17]" in result.status  # EEXIST
    assert str(cache) in result.status
    _built_elsewhere(result, cache)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (chown)")
def test_a_folder_or_library_of_another_user_is_refused(kit, tmp_path):
    cache = tmp_path / "cache"
    _plant(kit, cache, kit.planted)
    os.chown(cache, 65534, 65534)
    result = _run(kit, tmp_path, cache)
    assert not result.planted_ran and "is owned by uid 65534" in result.status
    _built_elsewhere(result, cache)
    # Our own private folder, another user's file in it: rebuilt in place.
    mine = tmp_path / "mine"
    os.chown(_plant(kit, mine, kit.planted), 65534, 65534)
    result = _run(kit, tmp_path, mine)
    assert not result.planted_ran and result.available and "is owned by uid 65534" in result.status
    assert (mine / kit.name).stat().st_uid == os.geteuid()


def test_a_symbolic_link_is_refused(kit, tmp_path):
    _plant(kit, tmp_path / "real", kit.planted)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    result = _run(kit, tmp_path, tmp_path / "link")
    assert not result.planted_ran and "is a symbolic link" in result.status
    _built_elsewhere(result, tmp_path / "link")
    # A link in place of the library in a private folder: replaced by a build.
    cache = tmp_path / "cache"
    _plant(kit, cache, kit.planted).unlink()
    (cache / kit.name).symlink_to(tmp_path / "real" / kit.name)
    result = _run(kit, tmp_path, cache)
    assert not result.planted_ran and result.available and len(result.builds) == 2
    assert not (cache / kit.name).is_symlink()


@pytest.mark.parametrize("damage", ["tampered", "truncated", "unloadable", "hash missing"])
def test_a_damaged_library_is_rebuilt_and_never_run(kit, tmp_path, damage):
    cache = tmp_path / "cache"
    if damage == "tampered":  # other code under the recorded hash
        _plant(kit, cache, kit.planted, digest_of=kit.built)
    elif damage == "truncated":  # a killed copy: dlopen would map past its end (SIGBUS)
        library = _plant(kit, cache, kit.built)
        os.truncate(library, library.stat().st_size // 3)
    elif damage == "unloadable":  # its hash matches, but it is no library
        (tmp_path / "junk").write_bytes(b"\x7fELF" + b"\0" * 4000)
        _plant(kit, cache, tmp_path / "junk")
    else:
        _plant(kit, cache, kit.built, digest_of=False)
    result = _run(kit, tmp_path, cache)
    assert result.available and not result.planted_ran, result.status
    assert len(result.builds) == 1 and "cached library refused" in result.status
    assert (cache / kit.name).read_bytes() == kit.built.read_bytes()


def test_a_failed_rebuild_falls_back_to_the_xla_path(kit, tmp_path):
    cache = tmp_path / "cache"
    _plant(kit, cache, kit.planted, digest_of=kit.built)
    result = _run(kit, tmp_path, cache, AJ_TEST_CXX_FAIL="1")
    assert not result.available and not result.planted_ran
    assert "does not match its recorded SHA-256" in result.status and "failed" in result.status


@pytest.mark.parametrize(
    "env", [{}, {"ACCEL_JAX_CACHE_DIR": "cache"}, {"XDG_CACHE_HOME": "xdg"}],
    ids=["no home", "relative cache dir", "relative XDG_CACHE_HOME"],
)
def test_no_relative_folder_is_ever_used(kit, tmp_path, env):
    work = tmp_path / "work"
    work.mkdir()
    env = {"HOME": None, "XDG_CACHE_HOME": None, "ACCEL_JAX_CACHE_DIR": None, **env}
    result = _run(kit, tmp_path, None, prelude=NO_HOME, cwd=work, **env)
    assert list(work.iterdir()) == []  # no "~", "cache" or "xdg" folder
    assert "is not an absolute path" in result.status
    _built_elsewhere(result, work)


def test_concurrent_cold_starts_build_once_into_a_private_folder(kit, tmp_path):
    cache = tmp_path / "new" / "cache"
    runs = [_start(kit, tmp_path, cache, AJ_TEST_CXX_SLEEP="2") for _ in range(2)]
    results = [_finish(run, tmp_path) for run in runs]
    assert all(r.available for r in results), [r.status for r in results]
    assert len(results[0].builds) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / kit.name).stat().st_mode) & 0o077 == 0


def test_stale_temporary_files_are_removed(kit, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = cache / f"{kit.name}.{gone.pid}.tmp"  # a build that was killed
    live = cache / f"{kit.name}.{os.getpid()}.tmp"  # a build still running
    old = cache / "tmpk3j2.so"  # accel_jax 0.1's temporary name, two hours old
    other = cache / "notes.txt"
    for path in (dead, live, old, other):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200,) * 2)
    result = _run(kit, tmp_path, cache)
    assert result.available and len(result.builds) == 1
    assert not dead.exists() and not old.exists() and live.exists() and other.exists()


# ------------------------------------------------------------ without the kernels: XLA


def test_without_a_compiler_everything_runs_on_the_xla_path(tmp_path):
    script = textwrap.dedent(
        """
        import jax.numpy as jnp, accel_jax as aj
        print(aj.native_available())
        print(aj.native_status())
        tx = aj.adam(0.1)
        p = {"w": jnp.ones(3)}
        try:
            aj.make_step(tx, kernel=True)(p, tx.init(p), p)
        except ValueError as err:
            print(err)
        p, s = aj.make_step(tx)(p, tx.init(p), {"w": jnp.ones(3)})
        print(round(float(p["w"][0]), 4))
        """
    )
    env = {**os.environ, "CXX": str(tmp_path / "no-such-compiler"), "PATH": str(tmp_path),
           "ACCEL_JAX_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("ACCEL_JAX_NATIVE", None)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "False"
    assert "no C++ compiler found" in out[1]
    assert out[2].startswith("apply_step(kernel=True): the native kernels are not available"), out
    assert out[3] == "0.9"
    assert not (tmp_path / "cache").exists()  # nothing is created without a compiler
    env = {**os.environ, "ACCEL_JAX_NATIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[:2] == ["False", "RuntimeError: disabled by ACCEL_JAX_NATIVE=0"]


def test_default_with_no_float32_leaf_is_the_xla_path():
    """bf16 mu with float32 nu (no kernel has that layout): no leaf qualifies, and the
    default (kernel=None) step is the XLA one."""
    tx = aj.adam(1e-2, mu_dtype=jnp.bfloat16, nu_dtype=jnp.float32)
    params = layer_like_params()
    state = tx.init(params)
    grads = random_grads(params, 0)
    kernel_step = fused._KERNEL_STEPS[tx.update]
    got = kernel_step(params, state, grads, {}, False)
    want = aj.apply_step(tx, params, state, grads, kernel=False)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(x, y)
