# Cython declarations of dns.py (an augmenting .pxd: see stitch.pxd). The memo's path typed: a message's bytes
# cut and its id read as C operations, the memo a dict looked up by a C call (the stitch stage asks this for
# each DNS message: a lookup's query, the server's receipt of it, the answer).
cimport cython

cdef dict _MEMO

@cython.locals(wire=bytes, key=bytes, hit=object, memo=dict)
cpdef tuple parse_dns_with_id(bytes data, bint tcp=*)
