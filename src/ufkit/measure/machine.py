"""What a measurement ran on: the CPU's model and the instruction sets that decide which kernels are fast.

Every stored result carries :func:`machine_info`'s columns and a short :func:`machine_id` computed from the ones
that change speed (CPU model, the ISA flags in :data:`FINGERPRINT_FLAGS`, thread count, torch version), so that a
result measured on one machine is never shown, or reused, as another's. The id is computed from the row's own
columns, so rows written before the id existed get the same id as new rows from the same machine.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform

#: CPU flags recorded with every result (``/proc/cpuinfo`` names).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
             "amx_int8", "amx_bf16")
#: The flags that decide which kernels and int8/bf16 paths run, hence the machine's identity for timings.
FINGERPRINT_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
#: The columns :func:`machine_id` reads.
MACHINE_COLUMNS = ("cpu_model", "cpu_flags", "threads", "torch_version")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (from ``/proc/cpuinfo`` on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and ":" in line:
                    flags = set(line.split(":", 1)[1].split())
                if flags and model:
                    break
    except OSError:
        pass
    return model, [f for f in CPU_FLAGS if f in flags]


def has_cpu_flags(*names: str) -> bool:
    """True when the CPU has every flag named (``/proc/cpuinfo`` spelling, e.g. ``"avx512_bf16"``)."""
    flags = set(cpu_model_and_flags()[1])
    return all(n in flags for n in names)


def native_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (``avx512_bf16`` or AMX-BF16), where bf16 autocast pays."""
    flags = set(cpu_model_and_flags()[1])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_id(info: dict) -> str:
    """A 12-hex-digit id of the machine a row was measured on.

    Args:
        info: a dict or a pandas row with the :data:`MACHINE_COLUMNS` (:func:`machine_info` gives them).

    Returns:
        the first 12 hex digits of the SHA-256 of the CPU model, the :data:`FINGERPRINT_FLAGS` present in
        ``cpu_flags``, the thread count and the torch version.
    """
    def given(name):  # a blank CSV cell reads back as NaN
        value = info.get(name)
        return None if value is None or value != value else value

    flags = {f.strip() for f in str(given("cpu_flags") or "").split(",")}
    key = {"cpu_model": str(given("cpu_model") or "").strip(),
           "flags": [f for f in FINGERPRINT_FLAGS if f in flags],
           "threads": int(given("threads") or 0),
           "torch": str(given("torch_version") or "").strip()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def machine_info(threads: int | None = None) -> dict:
    """What a result was measured on.

    Args:
        threads: the thread count the measurement used (default: torch's current intra-op thread count).

    Returns:
        dict with ``cpu_model``, ``cpu_flags`` (comma-separated :data:`CPU_FLAGS` present), ``cpu_count`` (logical
        CPUs), ``threads``, ``torch_version``, ``platform``, ``date`` (ISO 8601, UTC) and ``machine_id``
        (:func:`machine_id`).
    """
    import torch

    model, flags = cpu_model_and_flags()
    info = {
        "cpu_model": model,
        "cpu_flags": ",".join(flags),
        "cpu_count": os.cpu_count(),
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "torch_version": torch.__version__,
        "platform": platform.platform(terse=True),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info["machine_id"] = machine_id(info)
    return info


def machine_summary(info: dict | None = None) -> str:
    """One line naming a machine, for captions: ``"AMD EPYC, 2 thread(s) of 2 CPUs, flags: avx2,fma, torch 2.13"``.

    Args:
        info: :func:`machine_info`'s dict or a stored row (default: this machine).
    """
    info = info if info is not None else machine_info()
    cpus = info.get("cpu_count")
    of = f" of {int(cpus)} CPUs" if cpus is not None and str(cpus) != "nan" else ""
    return (f"{info['cpu_model']}, {int(info['threads'])} thread(s){of}, "
            f"flags: {info['cpu_flags'] or 'none of note'}, torch {info['torch_version']}")


def isa_description(flags: str | None = None) -> str:
    """In words, which vector and matrix units a CPU offers int8 and bf16 inference: for chapter prose.

    Args:
        flags: comma-separated flags as stored in ``cpu_flags`` (default: this CPU's).

    Returns:
        e.g. ``"AVX-512 with VNNI (int8 dot products) and BF16, no AMX"`` or
        ``"AVX2 and FMA only: no AVX-512 or AMX"``.
    """
    f = set((flags if flags is not None else ",".join(cpu_model_and_flags()[1])).split(","))
    if "avx512f" not in f:
        vnni = " and AVX-VNNI" if "avx_vnni" in f else ""
        return f"AVX2 and FMA{vnni} only: no AVX-512 or AMX" if "avx2" in f else "no AVX2"
    parts = ["AVX-512"]
    extras = [name for flag, name in (("avx512_vnni", "VNNI (int8 dot products)"), ("avx512_bf16", "BF16"))
              if flag in f]
    if extras:
        parts.append("with " + " and ".join(extras))
    amx = [name for flag, name in (("amx_int8", "int8"), ("amx_bf16", "bf16")) if flag in f]
    parts.append(f"and AMX tiles ({', '.join(amx)})" if amx else "no AMX")
    return " ".join(parts[:-1]) + (", " if not amx else " ") + parts[-1]
