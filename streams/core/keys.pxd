# C types for keys.py when compiled (build_native.py): Kafka's murmur2 on 32-bit C integers, the key's bytes
# read in place. Python arithmetic with masks gives the same values (keys.py run as Python).
cimport cython

@cython.locals(p="const unsigned char*", length=Py_ssize_t, end=Py_ssize_t, i=Py_ssize_t, extra=Py_ssize_t,
               m=cython.uint, mask=cython.uint, h=cython.uint, k=cython.uint)
cpdef unsigned int murmur2(bytes data)
