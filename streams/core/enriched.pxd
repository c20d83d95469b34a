# Cython declarations of enriched.py (an augmenting .pxd: see stitch.pxd): an enriched event is a C class,
# its fields struct members that the stitch stage reads (cimported by stitch.pxd) without an attribute lookup.
#
# SyscallEvent (svctrace.schemas.models) declared as the extension type it is: a msgspec Struct whose fields
# are CPython slots, laid out after the object header in the order of their names (CPython sorts __slots__).
# A variable typed SyscallEvent reads a field as a struct member at its fixed offset (a load), not through
# the type's attribute lookup and slot descriptor. enriched.py checks the layout when it is imported
# (_check_layout: every field read so must be the attribute of that name) and refuses to run otherwise.
cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *addr_ip;
        PyObject *addr_port;
        PyObject *cgroup_id;
        PyObject *comm;
        PyObject *container_id;
        PyObject *data;
        PyObject *errno_;
        PyObject *exe;
        PyObject *family;
        PyObject *fd;
        PyObject *kind;
        PyObject *local_ip;
        PyObject *local_port;
        PyObject *lost_since_ns;
        PyObject *n;
        PyObject *netns;
        PyObject *node;
        PyObject *pid;
        PyObject *proto;
        PyObject *redacted;
        PyObject *remote_ip;
        PyObject *remote_port;
        PyObject *res;
        PyObject *role;
        PyObject *size;
        PyObject *syscall;
        PyObject *tid;
        PyObject *ts;
    } svctrace_SyscallEventObject;
    """
    ctypedef class svctrace.schemas.models.SyscallEvent [object svctrace_SyscallEventObject, check_size error]:
        cdef readonly object addr_ip
        cdef readonly object addr_port
        cdef readonly object cgroup_id
        cdef readonly object comm
        cdef readonly object container_id
        cdef readonly object data
        cdef readonly object errno "errno_"
        cdef readonly object exe
        cdef readonly object family
        cdef readonly object fd
        cdef readonly object kind
        cdef readonly object local_ip
        cdef readonly object local_port
        cdef readonly object lost_since_ns
        cdef readonly object n
        cdef readonly object netns
        cdef readonly object node
        cdef readonly object pid
        cdef readonly object proto
        cdef readonly object redacted
        cdef readonly object remote_ip
        cdef readonly object remote_port
        cdef readonly object res
        cdef readonly object role
        cdef readonly object size
        cdef readonly object syscall
        cdef readonly object tid
        cdef readonly object ts


cdef class EnrichedEvent:
    cdef public SyscallEvent ev
    cdef public object flow, local_ref, remote_ref, addr_ref, proxy_of


cpdef tuple _event_fields(SyscallEvent e)
