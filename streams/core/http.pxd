# Cython declarations of http.py (an augmenting .pxd: see stitch.pxd). The parsers' memos typed, so a memo
# hit is C calls (a bytes prefix test, a dict lookup), not method lookups on untyped objects: the stitch
# stage asks these twice per request (the client's send and the backend's receipt; each side's response).
cimport cython

cdef dict _REQUESTS, _RESPONSES
cdef tuple _last_status

@cython.locals(hit=object, memo=dict)
cpdef parse_request(bytes data)
@cython.locals(hit=object, memo=dict, end=Py_ssize_t, line=bytes, last=tuple)
cpdef parse_response(bytes data)
