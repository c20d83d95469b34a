# Cython declarations of enrich.py (an augmenting .pxd, as stitch.pxd): the operator's code a C class, its
# attributes struct fields, and its per-event loop writing each EnrichedEvent's fields as struct members.
cimport cython

from svctrace.streams.core.enriched cimport EnrichedEvent, SyscallEvent


cdef class _Enriching:
    cdef public object index, partitions, lateness_ns, proxy_window_ns, emit_enriched, dns_port, late_slot_ns
    cdef public dict _ref_cache
    cdef public object _fast_sec
    cdef public dict _fast_refs, _fast_ports, _other_ips, _bucket_cache
    cdef public object newest_ts

    @cython.locals(d=EnrichedEvent, e=SyscallEvent, out=list, lost=list, by_bucket=dict, lists=dict, runs=dict, fast=dict,
                   fast_ports=dict)
    cpdef list _release(self, dict state, node, events)
    cpdef _bucket_list(self, flow, dict by_bucket, node)
    cpdef _ref(self, ip, port, proto, ts, sec)
    @cython.locals(pout=dict, vipc=dict, pending=list, reads=list, recent=list)
    cpdef _track_proxy(self, dict st, SyscallEvent e, lref, aref, bint server_side, set tracked)
