"""Builds, loads and registers accel_jax's native CPU kernels (``kernels/cpu_kernels.cc``).

The kernels are compiled on first use with the machine's C++ compiler against
the XLA FFI headers that jaxlib ships (``jax.ffi.include_dir()``), cached as a
shared library, loaded with ``ctypes`` and registered as ``jax.ffi`` targets for
the CPU platform. Nothing here is needed for correctness: when no compiler is
found, the build fails, or ``ACCEL_JAX_NATIVE=0`` is set, :func:`native_status`
says why and every step runs on the XLA path.

A library is loaded only from a folder and a file owned by this user, not
symbolic links and not writable by group or others, and only when its bytes
match the SHA-256 recorded when it was built; a damaged library is rebuilt once,
never executed. Concurrent first uses compile once (a file lock).

Environment:

* ``ACCEL_JAX_NATIVE=0`` disables the kernels;
* ``ACCEL_JAX_CACHE_DIR`` sets the cache folder (default
  ``$XDG_CACHE_HOME/accel_jax`` or ``~/.cache/accel_jax``, created with mode
  0700); a folder that is not absolute or not private is refused, with the
  reason in :func:`native_status`, and the process builds in a fresh private
  temporary folder instead;
* ``CXX`` names the compiler (default: ``c++``, ``g++`` or ``clang++``, the first found).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import math
import os
import shutil
import subprocess
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from accel_jax import _native_cache as cache

SOURCE = Path(__file__).parent / "kernels" / "cpu_kernels.cc"
TARGETS = (
    "accel_jax_adam_f32",
    "accel_jax_momentum_f32",
    "accel_jax_rms_f32",
    "accel_jax_adam8_f32",
    "accel_jax_adam_bf16",
    "accel_jax_adam_f32_packed",
    "accel_jax_momentum_f32_packed",
    "accel_jax_rms_f32_packed",
    "accel_jax_adam_bf16_packed",
)
# Kernels with a packed variant (``<target>_packed``: each state slot one buffer, see
# kernels/cpu_kernels.cc and accel_jax.pack_state).
PACKED = frozenset(t for t in TARGETS if f"{t}_packed" in TARGETS)
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w")

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ok": bool, "why": str, "library": path, "notes": [str]


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def _library_name(compiler: str) -> str:
    """The library's file name: a hash of the source, jax's version, the compiler and the CPU."""
    key = hashlib.sha256()
    # -march=native: the library is only valid on this kind of CPU, so its flags are in the key.
    for part in (SOURCE.read_bytes(), jax.__version__, compiler, _cpu_flags(), *_FLAGS):
        key.update(part if isinstance(part, bytes) else part.encode())
    return f"cpu_kernels-{key.hexdigest()[:16]}.so"


def _ensure(compiler: str, library: Path, notes: list[str], rebuild: str = "") -> bool:
    """Builds ``library`` unless it is there and verified; ``rebuild``: why it is not.

    Holds the folder's lock, so concurrent first uses compile once; notes why a
    cached library was refused; returns whether it built.
    """
    with cache.locked(library.parent):
        cache.remove_stale(library.parent)
        if not rebuild and os.path.lexists(library):
            rebuild = cache.problem(library) or ""
            if not rebuild:
                return False
        if rebuild:
            notes.append(f"cached library refused: {rebuild}")
        tmp = cache.temporary(library)
        try:
            cmd = [compiler, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
            os.chmod(tmp, 0o700)
            cache.write_digest(tmp, library)  # each an atomic rename; a reader that
            os.replace(tmp, library)  # sees one new and one old file refuses the pair
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return True


def _open(library: Path):
    fd = cache.open_verified(library)
    try:
        lib = ctypes.CDLL(cache.loadable_path(fd, library))
        return lib, [getattr(lib, name) for name in TARGETS]
    finally:
        os.close(fd)


def _load() -> None:
    if os.environ.get("ACCEL_JAX_NATIVE", "1") == "0":
        raise RuntimeError("disabled by ACCEL_JAX_NATIVE=0")
    if not SOURCE.exists():
        raise RuntimeError(f"kernel source {SOURCE} is missing from the installation")
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++ or clang++)")
    folder, notes = cache.folder()
    _state["notes"] = notes
    library = folder / _library_name(compiler)
    built = _ensure(compiler, library, notes)
    try:
        lib, functions = _open(library)
    except (OSError, AttributeError, cache.Untrusted) as err:
        if built:  # built a moment ago and unusable: the XLA path runs
            raise
        _ensure(compiler, library, notes, rebuild=f"{library} failed to load ({err})")
        lib, functions = _open(library)
    for name, function in zip(TARGETS, functions, strict=True):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(function), platform="cpu")
    _state["library"] = str(library)
    _state["lib"] = lib  # keeps the handle


def native_available() -> bool:
    """Whether the native CPU kernels are built and registered (builds them on first call).

    Never raises: when they cannot be built, :func:`native_status` says why and
    the optimizer steps use the XLA path.

    >>> import accel_jax as aj
    >>> isinstance(aj.native_available(), bool)
    True
    """
    with _lock:
        if "ok" not in _state:
            try:
                _load()
                _state.update(ok=True, why="built and registered: " + str(_state["library"]))
            except Exception as err:  # noqa: BLE001 - any failure means "use the XLA path"
                _state.update(ok=False, why=f"{type(err).__name__}: {err}")
            notes = _state.get("notes")
            if notes:
                _state["why"] = f"{_state['why']} ({'; '.join(notes)})"
        return bool(_state["ok"])


def native_status() -> str:
    """One line: where the native kernels were loaded from, or why they are not used."""
    native_available()
    return str(_state["why"])


# ------------------------------------------------------------------ calling the kernels
#
# What each kernel computes, in jax.numpy, operation by operation as in the C++
# source: the JVP of the kernel step, and the tests' reference. ``scalars`` and
# ``leaf`` (the leaf's value of ``leaf_scalars``) as in ``kernels/cpu_kernels.cc``.


def _adam(s, leaf, p, g, m, v):
    m = s[0] * m + s[1] * g
    v = s[2] * v + s[3] * (g * g)
    u = (m / s[4]) / (jnp.sqrt(v / s[5] + s[6]) + s[7]) + leaf * p
    return p + u * s[8], (m, v)


def _momentum(s, leaf, p, g, t):
    del leaf
    h = g * s[1]
    t = s[0] * t + h
    u = jnp.where(s[3] != 0, h + s[0] * t, t)
    return p + u * s[2], (t,)


def _rms(s, leaf, p, g, v):
    del leaf
    v = s[0] * v + s[1] * (g * g)
    return p + (g / (jnp.sqrt(v + s[2]) + s[3])) * s[4], (v,)


def _adam_bf16(s, leaf, p, g, m, v):
    """Adam with bfloat16 moments: computed in float32, stored rounded, used as stored."""
    m = (s[0] * m.astype(jnp.float32) + s[1] * g).astype(jnp.bfloat16)
    v = (s[2] * v.astype(jnp.float32) + s[3] * (g * g)).astype(jnp.bfloat16)
    mf, vf = m.astype(jnp.float32), v.astype(jnp.float32)
    u = (mf / s[4]) / (jnp.sqrt(vf / s[5] + s[6]) + s[7]) + leaf * p
    return p + u * s[8], (m, v)


def _adam8(s, leaf, p, g, m_codes, m_scale, r_codes, r_scale):
    """8-bit block-wise Adam (``transforms/quantized.py``); ``s[9]``: the count's int32 bits."""
    from accel_jax.transforms.quantized import QuantizedArray, dequantize, quantize

    count = jax.lax.bitcast_convert_type(s[9], jnp.int32)
    block = m_codes.shape[1]
    m = dequantize(QuantizedArray(m_codes, m_scale), p.shape)
    r = dequantize(QuantizedArray(r_codes, r_scale), p.shape)
    m = s[0] * m + s[1] * g
    v = s[2] * (r * r) + s[3] * (g * g)
    u = (m / s[4]) / (jnp.sqrt(v / s[5] + s[6]) + s[7]) + leaf * p
    qm = quantize(m, block, salt=count, field=0)
    qr = quantize(jnp.sqrt(v), block, salt=count, field=1)
    return p + u * s[8], (qm.codes, qm.scale, qr.codes, qr.scale)


REFERENCES = {
    "accel_jax_adam_f32": _adam,
    "accel_jax_adam8_f32": _adam8,
    "accel_jax_adam_bf16": _adam_bf16,
    "accel_jax_momentum_f32": _momentum,
    "accel_jax_rms_f32": _rms,
}

# Leaves per kernel call: XLA's compile time grows with the square of a custom
# call's aliased operands (1,000 leaves in one call: 77 s; in calls of 30: 3 s).
LEAVES_PER_CALL = 32


def reference_leaves(target, offsets, scalars, leaf_scalars, params, grads, slots):
    """:func:`native_leaves` in jax.numpy."""
    fn = REFERENCES[target]
    new_p, new_slots = [], [[] for _ in slots]
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if offsets is None:
            state = [slot[i] for slot in slots]
        else:
            state = [_packed_part(slot, offsets[i], p.shape) for slot in slots]
        p, state = fn(scalars, leaf_scalars[i], p, g, *state)
        new_p.append(p)
        for column, value in zip(new_slots, state, strict=True):
            column.append(value)
    if offsets is not None:  # write each leaf's new state back at its offset
        packed = []
        for buffer, column in zip(slots, new_slots, strict=True):
            for at, value in zip(offsets, column, strict=True):
                buffer = jax.lax.dynamic_update_slice(buffer, jnp.ravel(value), (at,))
            packed.append(buffer)
        new_slots = packed
    return new_p, new_slots


def _packed_part(buffer, offset, shape):
    size = math.prod(shape)
    return jax.lax.slice(buffer, (offset,), (offset + size,)).reshape(shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def native_leaves(target, offsets, scalars, leaf_scalars, params, grads, slots):
    """One optimizer step over float32 leaves by the native kernel ``target``.

    ``params`` and ``grads`` are lists of L arrays, ``slots`` a list of S such
    lists (the state arrays); returns ``(new_params, new_slots)``. With
    ``offsets`` (a tuple of L ints; the target must be in :data:`PACKED`) each
    slot is one 1-D buffer instead, holding leaf i's state at ``offsets[i]``, and
    the new slots are those buffers updated. Results share their buffers with
    ``params`` and ``slots`` (in place when donated). The JVP is
    :func:`reference_leaves`'s, so the step stays differentiable.
    """
    if not native_available():
        raise RuntimeError(f"native kernel {target} is not available: {native_status()}")
    n_slots = len(slots)
    new_p, new_slots = [], [[] for _ in slots]
    packed = list(slots) if offsets is not None else None
    for start in range(0, len(params), LEAVES_PER_CALL):
        part = slice(start, start + LEAVES_PER_CALL)
        ps, gs = params[part], grads[part]
        n = len(ps)
        # Operands: scalars, leaf_scalars, params, grads, slots; result block j
        # (params, then each slot) shares its buffers with the operand block it replaces.
        if packed is None:
            ss = [slot[part] for slot in slots]
            outs, name = [*ps, *(x for s in ss for x in s)], target
            aliases = {2 + b * n + i: j * n + i
                       for j, b in enumerate([0, *range(2, 2 + n_slots)]) for i in range(n)}
            operands = [*ps, *gs, *outs[n:]]
            attributes = {}
        else:  # each call updates its leaves' ranges of the packed buffers, in place
            outs, name = [*ps, *packed], f"{target}_packed"
            aliases = {2 + i: i for i in range(n)}
            aliases.update({2 + 2 * n + k: n + k for k in range(n_slots)})
            operands = [*ps, *gs, *packed]
            attributes = {"offsets": np.asarray(offsets[part], np.int64)}
        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in outs]
        call = jax.ffi.ffi_call(name, shapes, input_output_aliases=aliases,
                                vmap_method="sequential")
        out = call(scalars, leaf_scalars[start : start + n], *operands, **attributes)
        new_p += out[:n]
        if packed is None:
            for k in range(n_slots):
                new_slots[k] += out[(k + 1) * n : (k + 2) * n]
        else:
            packed = list(out[n:])
    return new_p, (new_slots if packed is None else packed)


@native_leaves.defjvp
def _native_leaves_jvp(target, offsets, primals, tangents):
    _, tangents_out = jax.jvp(
        functools.partial(reference_leaves, target, offsets), primals, tangents
    )
    return native_leaves(target, offsets, *primals), tangents_out
