# Cython declarations of enriched.py (an augmenting .pxd: see stitch.pxd): an enriched event is a C class,
# its fields struct members that the stitch stage reads (cimported by stitch.pxd) without an attribute lookup.
cdef class EnrichedEvent:
    cdef public object ev
    cdef public tuple order
    cdef public object flow, local_ref, remote_ref, addr_ref, proxy_of
