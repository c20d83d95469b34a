# Cython declarations of stitch.py (an augmenting .pxd: the .py stays plain Python, and runs as it is
# when the core is not compiled). They make the connection records and the operator C classes, whose
# attributes are struct fields rather than slot descriptors, and the per-event steps C calls.
# Everything typed here holds only what its type says, in every state a checkpoint can give back
# (a Conn's cl/cn/dns may be an older format's dicts until restore upgrades them: untyped).
cimport cython

from svctrace.streams.core.enriched cimport EnrichedEvent, SyscallEvent

# An event ref (records.Ref, a msgspec Struct) declared as the extension type it is, as enriched.pxd declares
# SyscallEvent: its fields CPython slots in the order of their names, read as struct members (_dedup_refs).
# stitch.py checks the layout as it is imported (_ref_fields).
cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        PyObject *n;
        PyObject *node;
        PyObject *ts;
        PyObject *what;
    } svctrace_RefObject;
    """
    ctypedef class svctrace.streams.core.records.Ref [object svctrace_RefObject, check_size error]:
        cdef readonly object n
        cdef readonly object node
        cdef readonly object ts
        cdef readonly object what

# The records' index names (A_*, R_*, C_*, D_*, CL_*, CN_*, L_*, Q_*, N_*, S_*): C integers, so that a
# record's field is read by its index into the list, not through a module global and a generic item
# lookup. (They are not the module's Python attributes then; DX_*, which a test imports, are.)
cdef Py_ssize_t A_NODE, A_PID, A_COMM, A_FD, A_CONTAINER_ID, A_IP, A_PORT, A_TS, A_HOST_PROCESS, A_REQUESTS, A_NREQUESTS, A_CLOSED
cdef Py_ssize_t R_INDEX, R_TS, R_RESPONSE_TS, R_EVIDENCE
cdef Py_ssize_t C_INDEX, C_TS, C_METHOD, C_TARGET, C_HOST, C_SENT, C_RECEIVED, C_RESPONSE_TS, C_STATUS, C_EVIDENCE, C_DONE
cdef Py_ssize_t D_NODE, D_PID, D_COMM, D_FD, D_BACKEND_IP, D_BACKEND_PORT, D_LOCAL_IP, D_LOCAL_PORT, D_TS, D_RESULT, D_ERRNO
cdef Py_ssize_t CL_NODE, CL_PID, CL_COMM, CL_CONTAINER_ID, CL_IP, CL_PORT, CL_FLOW
cdef Py_ssize_t CN_TS, CN_ADDR_IP, CN_ADDR_PORT, CN_REMOTE_IP, CN_REMOTE_PORT, CN_RESULT, CN_ERRNO
cdef Py_ssize_t L_ANCHOR, L_SEQ, L_T0, L_T1, L_QUERIES, L_NAMES, L_RESOLVED, L_CLAIMED, L_CLIENT
cdef Py_ssize_t Q_ID, Q_NAME, Q_TYPE, Q_TS, Q_ENDPOINT, Q_SERVER, Q_SERVER_PORT, Q_REF, Q_ANSWER
cdef Py_ssize_t N_TS, N_RCODE, N_ADDRESSES, N_CNAMES, N_TTL, N_FROM, N_REF
cdef Py_ssize_t S_TS, S_NODE, S_PID, S_COMM, S_IP, S_PORT, S_CONTAINER_ID, S_REF, S_FIRST


cdef class _ConnParts:
    cdef public object cl, cn, svc, dns, est, sv_last, nsv, px, npx, px_at
    cdef public object t_conn, client, client_pod, b, b_ip, b_port, translation, backend, hops
    cdef public object slow_hops, ready_eps, dns_out, service, connect, labels, who, dns_found, svc_always
    cdef public object svc_if_failed, misrouted, backend_desc, connect_error


cdef class Conn:
    cdef public str k
    cdef public object seq
    cdef public object qd
    cdef public object t0
    cdef public object t1
    cdef public list a
    cdef public object cl
    cdef public object cn
    cdef public object ccl
    cdef public object est
    cdef public list creq
    cdef public object nreq
    cdef public list sv
    cdef public list px
    cdef public object dns
    cdef public object svc
    cdef public list ev
    cdef public object eof
    cdef public object err
    cdef public object tx
    cdef public object rx


cdef class _Stitching:
    cdef public object index
    cdef public object lateness_ns, settle_ns, idle_ns, lookup_timeout_ns, dns_port, cluster_domain, udp_window_ns
    cdef public dict _nodeports
    cdef public object _nodeports_at
    cdef public set _dns_eps
    cdef public object _dns_eps_at
    cdef public long long _dns_eps_lo, _dns_eps_hi
    cdef public dict _endpoints, _dns_servers, _findings, _whys, _conn_parts, _svcs, _conn_keys, _lkeys
    cdef public object encode_chain

    @cython.locals(conn=Conn, conns=dict, conn_keys=dict, ready=list, d=EnrichedEvent, e=SyscallEvent, prev=SyscallEvent,
                   data=bytes, marked=set, keep=set)
    cpdef list advance(self, dict state, key, watermark_ns, bint final=*)
    cpdef _fire_until(self, dict state, now, list out)
    @cython.locals(data=bytes, a=list)
    cpdef _client_step(self, dict state, Conn conn, EnrichedEvent d, SyscallEvent e, kind, ts, ip, port)
    @cython.locals(conn=Conn, conns=dict, marked=set, keep=set, cn=list, me=list)
    cpdef _apply_udp(self, dict st, EnrichedEvent d, SyscallEvent e, kind, ts, list out)
    cpdef _udp_error(self, dict st, Conn conn, SyscallEvent e, what)
    cpdef _due_at(self, dict st, Conn conn, at)
    cpdef _schedule(self, dict st, Conn conn)
    cpdef _schedule_new(self, dict st, Conn conn)
    @cython.locals(t1=cython.longlong, settle=cython.longlong, dl=cython.longlong, at=cython.longlong)
    cpdef _conn_deadline(self, Conn conn)
    cpdef _settles(self, dict st, Conn conn, ts)
    @cython.locals(e=SyscallEvent)
    cpdef _resolve_service(self, dict st, Conn conn, EnrichedEvent d)
    @cython.locals(e=SyscallEvent, marks=set, lk_by_key=dict, lookups=list, qs=list, names=list)
    cpdef _apply_dns(self, dict st, EnrichedEvent d, wire=*, server=*)
    cpdef bint _dns_server_at(self, ip, port, ts)
    cpdef _own_receipts(self, Conn conn)
    @cython.locals(e=SyscallEvent, marks=set, lk_by_key=dict, lookups=list, qs=list)
    cpdef _claim_lookup(self, dict st, Conn conn, EnrichedEvent d, aip)
    @cython.locals(conn=Conn, conns=dict, tq=list, exact=dict, found=dict, marked=set, keep=set, live=list,
                   now_c=cython.longlong, settle_ns=cython.longlong, idle_ns=cython.longlong, idle_at=cython.longlong,
                   ccl_at=cython.longlong, rts_c=cython.longlong, horizon=cython.longlong, first_ts=cython.longlong,
                   over=bint)
    cpdef _timers(self, dict st, now, list out, bint final)
    cpdef _finish(self, dict st, Conn conn, list out, final)
    cpdef _emit_request(self, dict st, Conn conn, req, list out, final)
    @cython.locals(p=_ConnParts)
    cpdef _ConnParts _parts(self, Conn conn)
    @cython.locals(p=_ConnParts)
    cpdef _emit(self, dict st, Conn conn, req, list out, final)
    cpdef _lost_on(self, dict st, nodes, t0, t1)
    cpdef _endpoint(self, node, pid, comm, ip, port, ts, container_id=*)
    cpdef _new_endpoint(self, node, pid, comm, ip, port, ts, container_id=*)
    cpdef _backend_desc(self, _ConnParts p, Conn conn)
    cpdef _conn_key(self, ip, port)
    cpdef _lkey(self, flow, node, pid)
    cpdef _svc_of(self, sv, sp, vip, port, via, proto=*)
    cpdef _lookups(self, dict st, lkey, list lookups, ts)
    cpdef _drop_claimed(self, dict st, now)
    cpdef _dns_summary(self, dict st, list lk)
    cpdef _exact_lookup_head(self, dict st)
    cpdef _dns_findings(self, list dnsx, client_pod)
    cpdef _dns_occs(self, list dnsx, found, dict base_vars, client_pod_name)


@cython.locals(data=bytes, lref=dict)
cpdef _acceptor_step(Conn conn, EnrichedEvent d, SyscallEvent e, kind, ts)
cpdef bint _accepting_over(Conn conn)
cpdef _proxy_step(Conn conn, SyscallEvent e, kind, ts)
@cython.locals(conn=Conn)
cpdef Conn _new_conn(key, SyscallEvent e, seq)
@cython.locals(ready=list, runs=list, left=list, run=list, i=Py_ssize_t, n=Py_ssize_t, cut=Py_ssize_t,
               parts=Py_ssize_t)
cpdef list _take_ready(dict state, watermark_ns)
@cython.locals(d=EnrichedEvent, e=SyscallEvent, p=SyscallEvent)
cpdef bint _in_event_order(list buf)
cpdef _lookup_numbered(lookups, ls)
@cython.locals(i=Py_ssize_t)
cpdef _remove_lookup(list lookups, lk)
@cython.locals(lk=dict, lks=dict, out=list, count=dict, versions=dict, dead_in=dict, dead=set, changed=list, dying=list,
               held=list, keys=list, ended=list, i=Py_ssize_t, n=Py_ssize_t)
cpdef list _lookup_groups(dict st, cl, bint full)
@cython.locals(out=list)
cpdef list _flat_queue(list queue, base)
cpdef _heaps_of_tuples(dict state)
cpdef bint _lists_in_heaps(dict state)
@cython.locals(factor=Py_ssize_t, floor=Py_ssize_t)
cpdef Py_ssize_t _tq_compact_at(Py_ssize_t nconns)
@cython.locals(tail=tuple)
cpdef _tq_push(list tq, fifo, tuple entry)
@cython.locals(head=tuple, x=tuple)
cpdef _tq_least(list tq, qn, qs, qp)
cpdef _evidence(Conn conn, SyscallEvent e, what)
cpdef _trim_client(Conn conn)
cpdef _outcome(Conn conn, req, bint idle_closed=*)
cpdef _first_and_last(list refs, Py_ssize_t limit)
@cython.locals(out=list, r=Ref, q=Ref, t=cython.longlong, tq=cython.longlong, i=Py_ssize_t, j=Py_ssize_t, n=Py_ssize_t, tie=bint)
cpdef list _dedup_refs(list refs)
cpdef tuple _ref_fields(Ref r)
cpdef _svc(sv, sp, vip, port, via, proto=*)
cpdef _port_for_target(sv, port)
cpdef _pod_of(index, ip, ts, container_id=*)
cpdef _dns_out(list dnsx, index, ts, dict servers)
