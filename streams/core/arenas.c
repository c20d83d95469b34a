/* pymalloc's arenas on transparent huge pages: the compiled form of arenas.py (native.py builds it with the core).

Why: a worker's state (connections, DNS lookups, the events handed between its stages) is ~1 GB of small Python
objects, and most of the stitch advance's reads are of objects seconds old, scattered over it. pymalloc gets
them from 1 MiB arenas, each its own mmap of 4 KiB pages: nearly every such read misses the TLB, and on a
virtual machine a miss walks two page tables (bench.huge_pages; docs/performance.md, "pymalloc's arenas and glibc's
malloc on transparent huge pages"). CPython 3.15 gives pymalloc huge pages of its own (PYTHON_PYMALLOC_HUGEPAGES,
gh-144319); on the Python the project runs, the public arena allocator hook does it.

How: one region of address space is reserved (MAP_NORESERVE: nothing is committed until touched), aligned to
2 MiB and marked MADV_HUGEPAGE, so the kernel backs it with transparent huge pages where it has them (THP
"always" or "madvise"; with "never" it is ordinary memory). pymalloc's 1 MiB arenas are cut from it in order.
An arena pymalloc frees is kept for its next one, not returned to the system: giving back half a huge page
splits it, and a worker frees and takes arenas again at every checkpoint (the events handed since the last
one are freed at its cut). So the memory held stays at its peak, as the worker's malloc settings already keep
fetched records' (svctrace.kafka.clients.keep_freed_memory). Arenas of another size (none on 64-bit
CPython 3.10-3.14), arenas made before the hook was installed, and any once the region is used up, come from
and go back to the allocator that was there before.

pymalloc calls the hook with the GIL held (it allocates only under it), so the free list needs no lock. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <sys/mman.h>

#define ARENA ((size_t)1 << 20) /* pymalloc's arena on 64-bit CPython 3.10+ */
#define HUGE_PAGE ((size_t)2 << 20)

static PyObjectArenaAllocator previous;
static char *region;           /* 2 MiB aligned; NULL until installed */
static size_t region_size;     /* bytes reserved */
static size_t region_used;     /* bytes cut into arenas so far */
static void *free_arenas;      /* arenas freed, each holding the next's address in its first word */
static size_t free_count;      /* ... how many */
static size_t outside;         /* arenas asked while the region could not give one */

static void *arena_alloc(void *ctx, size_t size)
{
    if (size == ARENA) {
        if (free_arenas != NULL) {
            void *arena = free_arenas;
            free_arenas = *(void **)arena;
            free_count--;
            return arena;
        }
        if (region_size - region_used >= size) {
            void *arena = region + region_used;
            region_used += size;
            return arena;
        }
    }
    outside++;
    return previous.alloc(previous.ctx, size);
}

static void arena_free(void *ctx, void *ptr, size_t size)
{
    if ((char *)ptr >= region && (char *)ptr < region + region_size) {
        *(void **)ptr = free_arenas;
        free_arenas = ptr;
        free_count++;
        return;
    }
    previous.free(previous.ctx, ptr, size);
}

static PyObject *use_huge_pages(PyObject *module, PyObject *arg)
{
    if (region != NULL)
        Py_RETURN_TRUE;
    size_t reserve = PyLong_AsSize_t(arg);
    if (reserve == (size_t)-1 && PyErr_Occurred())
        return NULL;
    reserve &= ~(HUGE_PAGE - 1);
    if (reserve < HUGE_PAGE) {
        PyErr_SetString(PyExc_ValueError, "use_huge_pages: reserve at least 2 MiB");
        return NULL;
    }
    char *mapped = mmap(NULL, reserve + HUGE_PAGE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapped == MAP_FAILED)
        Py_RETURN_FALSE; /* e.g. strict overcommit refusing the reservation: arenas as before */
    char *start = (char *)(((uintptr_t)mapped + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
    if (madvise(start, reserve, MADV_HUGEPAGE) != 0) { /* a kernel without THP */
        munmap(mapped, reserve + HUGE_PAGE);
        Py_RETURN_FALSE;
    }
    region = start;
    region_size = reserve;
    PyObject_GetArenaAllocator(&previous);
    PyObjectArenaAllocator mine = {NULL, arena_alloc, arena_free};
    PyObject_SetArenaAllocator(&mine);
    Py_RETURN_TRUE;
}

static PyObject *stats(PyObject *module, PyObject *unused)
{
    if (region == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:K}", "reserved", (Py_ssize_t)region_size,
                         "arenas", (Py_ssize_t)(region_used / ARENA - free_count), "free", (Py_ssize_t)free_count,
                         "outside", (Py_ssize_t)outside, "start", (unsigned long long)(uintptr_t)region);
}

static PyMethodDef methods[] = {
    {"use_huge_pages", use_huge_pages, METH_O,
     "use_huge_pages(reserve: int) -> bool\n--\n\nFrom now on, cut pymalloc's arenas from one region of `reserve` "
     "bytes marked for transparent huge pages. False (nothing changed) where the region cannot be had."},
    {"stats", stats, METH_NOARGS,
     "stats() -> dict | None\n--\n\nThe region's bytes reserved, arenas in use and kept free, arenas asked while it "
     "could not give one, its start address; None before use_huge_pages()."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "svctrace.streams.core.arenas",
    "pymalloc's arenas on transparent huge pages (arenas.c; arenas.py is its uncompiled stand-in).", -1, methods,
};

PyMODINIT_FUNC PyInit_arenas(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "COMPILED", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
