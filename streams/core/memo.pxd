# Cython declarations of memo.py (an augmenting .pxd: see stitch.pxd). The memo and its seconds are C classes:
# their attributes struct fields, so a question answered already (two comparisons and a dict lookup: the
# enrich and stitch stages ask several per connection and per chain) reads no instance dict.
cimport cython


cdef class _Second:
    cdef public object t
    cdef public dict pod, cid, svc, eps, ready, sfe, node, dns


cdef class MemoIndex:
    cdef public object index, max_entries
    cdef public dict _seconds
    cdef public Py_ssize_t _entries
    cdef public object _lo, _hi
    cdef public _Second _cur

    @cython.locals(sec=_Second)
    cpdef _Second _second(self, ts)
    cpdef _added(self)
    @cython.locals(sec=_Second)
    cpdef pod_by_ip(self, ip, ts)
    @cython.locals(sec=_Second)
    cpdef pod_by_container(self, container_id, ts)
    @cython.locals(sec=_Second)
    cpdef service_by_ip(self, ip, port=*, protocol=*, ts=*)
    @cython.locals(sec=_Second)
    cpdef endpoints(self, namespace, service, ts)
    @cython.locals(sec=_Second)
    cpdef services_for_endpoint(self, ip, port=*, ts=*)
    @cython.locals(sec=_Second)
    cpdef node_by_ip(self, ip, ts)
    @cython.locals(sec=_Second)
    cpdef is_cluster_dns(self, ip, ts)
