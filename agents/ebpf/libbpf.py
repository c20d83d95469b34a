"""The few libbpf1 entry points the loader needs, through ctypes.

Debian's libbpf1 (1.1.x) is the only native dependency: no BCC, no bpftrace,
no compiled Python extension. Signatures follow /usr/include/bpf/libbpf.h.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import deque

c_void_p, c_char_p, c_int, c_uint32, c_size_t = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t

BTF_KIND_STRUCT = 4
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


class LibbpfMissing(RuntimeError):
    pass


class ObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as of libbpf 1.1 (`sz` lets libbpf accept older/newer layouts)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_char_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", c_uint32), ("type", c_uint32), ("offset", c_uint32)]


class BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

_SIGNATURES = {
    "bpf_object__open_file": (c_void_p, [c_char_p, ctypes.POINTER(ObjectOpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__btf": (c_void_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_program__attach_cgroup": (c_void_p, [c_void_p, c_int]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__is_internal": (ctypes.c_bool, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int32, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(BtfType), [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_set_print": (c_void_p, [c_void_p]),
}


class Libbpf:
    """Loaded libbpf.so.1 with typed functions as attributes, and its log captured."""

    def __init__(self, name: str | None = None) -> None:
        path = name or ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise LibbpfMissing(f"libbpf1 not found ({e}): install the Debian package libbpf1") from None
        for fn, (restype, argtypes) in _SIGNATURES.items():
            f = getattr(self.lib, fn)
            f.restype, f.argtypes = restype, argtypes
            setattr(self, fn, f)
        self.log: deque[str] = deque(maxlen=200)
        self._libc = ctypes.CDLL(None)
        self._libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
        self._print = PRINT_FN(self._on_print)  # keep a reference: libbpf holds the pointer
        self._lock = threading.Lock()
        self.libbpf_set_print(ctypes.cast(self._print, c_void_p))

    def _on_print(self, level: int, fmt: bytes, va_list: int) -> int:
        if level > 1:  # LIBBPF_DEBUG: relocation chatter, not worth keeping
            return 0
        buf = ctypes.create_string_buffer(1024)
        self._libc.vsnprintf(buf, len(buf), fmt, va_list)  # x86-64: va_list is passed as a pointer
        text = buf.value.decode("utf-8", "replace").rstrip()
        if text:
            with self._lock:
                self.log.extend(text.splitlines())
        return 0

    def recent_log(self, n: int = 20) -> str:
        with self._lock:
            return "\n".join(list(self.log)[-n:])

    @staticmethod
    def errno() -> int:
        return ctypes.get_errno()

    def btf_name(self, btf: int, off: int) -> str:
        return (self.btf__name_by_offset(btf, off) or b"").decode()

    def datasec_vars(self, btf: int, section: str) -> dict[str, tuple[int, int]]:
        """{variable: (offset, size)} of a data section (.rodata) from the object's BTF."""
        tid = self.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
        if tid < 0:
            return {}
        t = self.btf__type_by_id(btf, tid)
        vlen = t.contents.info & 0xFFFF
        infos = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfVarSecinfo))
        out = {}
        for i in range(vlen):
            si = infos[i]
            var = self.btf__type_by_id(btf, si.type)
            out[self.btf_name(btf, var.contents.name_off)] = (si.offset, si.size)
        return out

    def member_offset(self, btf: int, struct_name: str, member: str) -> int | None:
        """Byte offset of a member of a struct in the object's BTF (None when absent)."""
        tid = self.btf__find_by_name_kind(btf, struct_name.encode(), BTF_KIND_STRUCT)
        if tid < 0:
            return None
        t = self.btf__type_by_id(btf, tid)
        vlen = t.contents.info & 0xFFFF
        kflag = t.contents.info >> 31
        members = ctypes.cast(ctypes.addressof(t.contents) + ctypes.sizeof(BtfType), ctypes.POINTER(BtfMember))
        for i in range(vlen):
            m = members[i]
            if self.btf_name(btf, m.name_off) == member:
                return ((m.offset & 0xFFFFFF) if kflag else m.offset) // 8
        return None


def strerror(err: int) -> str:
    return f"{os.strerror(err)} (errno {err})"
