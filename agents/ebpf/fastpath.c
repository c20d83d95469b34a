/* The agent's native per-event loop: BPF ring records -> a syscall batch's events, as the JSON of
 * each event (the syscall-batch form) or as the rows of the open batch it writes in the
 * syscall-columns form (msgpack: schemas/syscall_columns.py) when the batch closes.
 *
 * Built by agents/ebpf/build.py (the machine's cc, cached by source hash) and driven through
 * ctypes by agents/ebpf/fastpath.py. Python stays the single source of truth for what an event
 * says: it builds one JSON template per (socket tuple, sockaddr, comm, pid, fd, cgroups, role)
 * with records.Normalizer and hands it here; this loop only fills in the per-event values
 * (ts, n, tid, res, size, payload) of sends and receives, which are nearly all events.
 *
 * fp_walk stops and hands the record back to Python (FP_PYTHON) whenever it cannot finish it
 * exactly as Python would: another syscall, a failed call, no template yet, or a payload the
 * redaction pre-check flags (same words as agents/redact.py `_MAYBE`: the redactor itself stays
 * in Python). The role of each (pid, fd) lives here, in one table Python reads and writes
 * through fp_role_* (records.Normalizer.roles), so both paths share that state.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define RINGBUF_BUSY (1u << 31)
#define RINGBUF_DISCARD (1u << 30)
#define RINGBUF_LEN (RINGBUF_DISCARD - 1)
#define RINGBUF_HDR 8

#define REC_SIZE 140 /* struct event before data[] (records.RECORD) */
#define KEY_AT 52    /* records.KEY_AT: sc, sockaddr, tuple, comm */
#define KEY_BYTES (REC_SIZE - KEY_AT)
#define MAX_SNAP 4096

#define ROLE_SLOTS (1u << 19) /* twice records.Normalizer.MAX_ROLES */
#define TMPL_SLOTS (1u << 17)
#define TMPL_MAX 65536 /* records.Normalizer clears its templates past this many too */
#define NSLOTS 6       /* ts, n, tid, res, size, data: the template's placeholders, in order */
#define NF_MAX 64      /* event fields of the columns form (SyscallEvent has 28) */

enum { FP_IDLE = 0, FP_FULL = 1, FP_PYTHON = 2 };
enum { WHY_OTHER = 0, WHY_TEMPLATE = 1, WHY_PAYLOAD = 2 };

struct tkey {
	uint8_t rec[KEY_BYTES];
	uint32_t pid;
	int32_t fd;
	uint64_t cg2, cg1;
	uint32_t role;
	uint32_t pad;
};

/* The columns form: every field of one event (a socket's template, or one event Python encoded) as
 * the msgpack value it has in the record, back to back; the fields that vary per event (ts, n, tid,
 * res, size, data, redacted) are read from the row instead. */
struct ccols {
	struct ccols *next; /* on the open batch's list of those freed when it closes */
	uint64_t used;      /* the batch (fp_ctx.gen) that last took a row of it */
	uint64_t sgen;      /* the strings table (fp_ctx.strgen) whose indexes sidx holds */
	uint32_t bound;     /* pipeline._bound of its fields (the payload's bytes are added per event) */
	uint32_t *off, *len;
	int32_t *sidx;
	uint8_t *blob;
};

struct tmpl {
	struct tkey key;
	uint8_t used, learn;
	char *text; /* the literal pieces around the placeholders, back to back */
	uint32_t at[NSLOTS + 1], len[NSLOTS + 1];
	struct ccols *cols; /* the columns form's template (text is NULL then) */
};

/* What each field of the columns form is (fp_cols_setup): a value of the template, a string of the
 * template (an index into the record's strings), or one of the row's own values. */
enum { K_CONST = 0, K_STR = 1, K_TS = 2, K_N = 3, K_TID = 4, K_RES = 5, K_SIZE = 6, K_DATA = 7, K_REDACTED = 8 };
#define K_ARRAY 0x80 /* an array even when every event has the same value (the first field, ts) */

struct crow {
	struct ccols *t;
	int64_t v[5]; /* ts, n, tid, res, size */
	uint64_t doff; /* its payload in fp_ctx.pay */
	uint32_t dlen;
	uint8_t flags; /* ROW_SIZE: size is not null; ROW_DATA: data is not null; ROW_REDACTED */
};
#define ROW_SIZE 1
#define ROW_DATA 2
#define ROW_REDACTED 4

struct sent { /* one string of the open record's table */
	const uint8_t *p;
	uint32_t len, idx;
	uint64_t gen; /* fp_ctx.strgen of its table: entries of older tables are empty */
};

struct role_slot {
	uint64_t key; /* pid << 32 | (uint32) fd */
	uint32_t role; /* 0: empty slot */
};

/* The part Python reads and writes (fastpath.Ctx mirrors it). */
struct fp_ctx {
	uint64_t n;        /* sequence number of the last event written (records.Normalizer.n) */
	int64_t toff;      /* boot -> epoch offset of ts */
	uint32_t snaplen;
	uint32_t redact;   /* stop at payloads the pre-check flags */
	uint32_t max_roles;
	uint32_t io_mask;  /* bit sc set: a send/receive syscall (records.IO_SYSCALLS) */
	/* results of the last fp_walk */
	uint64_t cons, done, events, bytes;
	uint32_t why, role; /* FP_PYTHON: why, and the socket's role when the record was read */
	char *out;
	uint64_t out_len, out_cap;
	/* private */
	struct role_slot *roles;
	uint32_t nroles, ntmpl;
	struct tmpl *tmpl;
	/* the columns form's open batch */
	uint32_t nf, cols_on;
	uint8_t kind[NF_MAX];
	uint64_t gen;    /* the open batch's number */
	uint64_t strgen; /* the strings table's: one per fp_cols_close attempt */
	struct crow *rows;
	uint64_t nrows, rows_cap;
	uint8_t *pay;
	uint64_t pay_len, pay_cap;
	struct ccols *own; /* freed when the batch closes: events Python gave, templates retired while in use */
	struct sent *sh;   /* strings -> index, entries of older tables (strgen) empty */
	uint32_t sh_cap, sh_n;
	const uint8_t **sp;
	uint32_t *sl, sp_cap;
};

static uint64_t mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

/* ---- roles ------------------------------------------------------------------------------ */

static uint64_t role_key(uint32_t pid, int32_t fd) { return (uint64_t)pid << 32 | (uint32_t)fd; }

static struct role_slot *role_find(struct fp_ctx *c, uint64_t key)
{
	uint32_t i = mix(key) & (ROLE_SLOTS - 1);
	while (c->roles[i].role && c->roles[i].key != key)
		i = (i + 1) & (ROLE_SLOTS - 1);
	return &c->roles[i];
}

uint32_t fp_role_get(struct fp_ctx *c, uint32_t pid, int32_t fd) { return role_find(c, role_key(pid, fd))->role; }

uint32_t fp_role_count(struct fp_ctx *c) { return c->nroles; }

void fp_role_clear(struct fp_ctx *c)
{
	memset(c->roles, 0, sizeof(*c->roles) * ROLE_SLOTS);
	c->nroles = 0;
}

void fp_role_set(struct fp_ctx *c, uint32_t pid, int32_t fd, uint32_t role)
{
	if (c->nroles >= ROLE_SLOTS / 2)
		fp_role_clear(c); /* never fuller than half: probing always ends */
	struct role_slot *s = role_find(c, role_key(pid, fd));
	if (!s->role)
		c->nroles++;
	s->key = role_key(pid, fd);
	s->role = role;
}

/* Normalizer._remember: bounded, forgetting everything when full. */
static void role_remember(struct fp_ctx *c, uint32_t pid, int32_t fd, uint32_t role)
{
	if (c->nroles >= c->max_roles)
		fp_role_clear(c);
	fp_role_set(c, pid, fd, role);
}

uint32_t fp_role_del(struct fp_ctx *c, uint32_t pid, int32_t fd)
{
	struct role_slot *s = role_find(c, role_key(pid, fd));
	uint32_t was = s->role;
	if (!was)
		return 0;
	/* linear probing: shift later members of the cluster back into the hole */
	uint32_t hole = s - c->roles, i = hole;
	for (;;) {
		i = (i + 1) & (ROLE_SLOTS - 1);
		if (!c->roles[i].role)
			break;
		uint32_t home = mix(c->roles[i].key) & (ROLE_SLOTS - 1);
		if (((i - home) & (ROLE_SLOTS - 1)) >= ((i - hole) & (ROLE_SLOTS - 1))) {
			c->roles[hole] = c->roles[i];
			hole = i;
		}
	}
	c->roles[hole].role = 0;
	c->nroles--;
	return was;
}

/* Every (pid, fd, role), for tests: returns how many were written (at most max). */
uint32_t fp_role_dump(struct fp_ctx *c, uint64_t *keys, uint32_t *roles, uint32_t max)
{
	uint32_t k = 0;
	for (uint32_t i = 0; i < ROLE_SLOTS && k < max; i++)
		if (c->roles[i].role) {
			keys[k] = c->roles[i].key;
			roles[k++] = c->roles[i].role;
		}
	return k;
}

/* ---- templates ---------------------------------------------------------------------------- */

static void make_key(struct tkey *k, const uint8_t *rec, uint32_t role)
{
	k->pad = 0; /* every other byte is set below: the key hashes and compares as raw bytes */
	memcpy(k->rec, rec + KEY_AT, KEY_BYTES);
	memcpy(&k->pid, rec + 32, 4);
	memcpy(&k->fd, rec + 40, 4);
	memcpy(&k->cg2, rec + 8, 8);
	memcpy(&k->cg1, rec + 16, 8);
	k->role = role;
}

static uint64_t key_hash(const struct tkey *k)
{
	const uint8_t *p = (const uint8_t *)k;
	uint64_t h = 0x9e3779b97f4a7c15ULL, w;
	for (size_t i = 0; i + 8 <= sizeof(*k); i += 8) {
		memcpy(&w, p + i, 8);
		h = (h ^ w) * 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return mix(h);
}

static struct tmpl *tmpl_find(struct fp_ctx *c, const struct tkey *k)
{
	uint32_t i = key_hash(k) & (TMPL_SLOTS - 1);
	while (c->tmpl[i].used && memcmp(&c->tmpl[i].key, k, sizeof(*k)))
		i = (i + 1) & (TMPL_SLOTS - 1);
	return &c->tmpl[i];
}

/* A columns template leaves the table: freed now, or with the open batch if a row of it points there. */
static void cols_drop(struct fp_ctx *c, struct ccols *t)
{
	if (!t)
		return;
	if (t->used == c->gen && c->nrows) {
		t->next = c->own;
		c->own = t;
	} else {
		free(t);
	}
}

void fp_clear_templates(struct fp_ctx *c)
{
	for (uint32_t i = 0; i < TMPL_SLOTS; i++)
		if (c->tmpl[i].used) {
			free(c->tmpl[i].text);
			cols_drop(c, c->tmpl[i].cols);
			c->tmpl[i].text = NULL;
			c->tmpl[i].cols = NULL;
			c->tmpl[i].used = 0;
		}
	c->ntmpl = 0;
}

/* The template of the socket of the record at `rec` seen with role `role`: Python's %-format
 * text (six placeholders: %d x5 then %b; %% for a literal %). Returns 0, or -1 if malformed. */
int fp_add_template(struct fp_ctx *c, const uint8_t *rec, uint32_t role, const char *text, uint32_t len, uint32_t learn)
{
	struct tkey k;
	make_key(&k, rec, role);
	char *lit = malloc(len + 1);
	uint32_t at[NSLOTS + 1], ln[NSLOTS + 1], slot = 0, o = 0;
	if (!lit)
		return -1;
	at[0] = 0;
	for (uint32_t i = 0; i < len; i++) {
		if (text[i] != '%') {
			lit[o++] = text[i];
			continue;
		}
		if (++i >= len)
			goto bad;
		if (text[i] == '%') {
			lit[o++] = '%';
			continue;
		}
		if (slot >= NSLOTS || text[i] != (slot == NSLOTS - 1 ? 'b' : 'd'))
			goto bad;
		ln[slot] = o - at[slot];
		at[++slot] = o;
	}
	if (slot != NSLOTS)
		goto bad;
	ln[NSLOTS] = o - at[NSLOTS];
	if (c->ntmpl > TMPL_MAX)
		fp_clear_templates(c);
	struct tmpl *t = tmpl_find(c, &k);
	if (t->used) {
		free(t->text);
		cols_drop(c, t->cols);
	} else {
		c->ntmpl++;
	}
	t->key = k;
	t->used = 1;
	t->learn = learn;
	t->text = lit;
	t->cols = NULL;
	memcpy(t->at, at, sizeof(at));
	memcpy(t->len, ln, sizeof(ln));
	return 0;
bad:
	free(lit);
	return -1;
}

/* ---- encoding ----------------------------------------------------------------------------- */

static const char DIGITS2[201] =
	"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
	"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
	"8081828384858687888990919293949596979899";

/* Decimal digits of v, two at a time from the end (timestamps have 19). */
static char *put_u64(char *p, uint64_t v)
{
	int n = 1;
	for (uint64_t t = v; t >= 10; t /= 10)
		n++;
	char *end = p + n;
	while (v >= 100) {
		uint32_t r = v % 100;
		v /= 100;
		end -= 2;
		memcpy(end, DIGITS2 + 2 * r, 2);
	}
	if (v >= 10) {
		end -= 2;
		memcpy(end, DIGITS2 + 2 * v, 2);
	} else {
		*--end = '0' + v;
	}
	return p + n;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static uint16_t B64_PAIRS[4096]; /* 12 bits -> their two base64 characters */

static void init_base64(void)
{
	for (int i = 0; i < 4096; i++) {
		char pair[2] = {B64[i >> 6], B64[i & 63]};
		memcpy(&B64_PAIRS[i], pair, 2);
	}
}

static char *put_base64(char *p, const uint8_t *d, uint32_t n)
{
	uint32_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
		memcpy(p, &B64_PAIRS[v >> 12], 2);
		memcpy(p + 2, &B64_PAIRS[v & 4095], 2);
		p += 4;
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)d[i] << 16;
		p[0] = B64[v >> 18];
		p[1] = B64[(v >> 12) & 63];
		p[2] = p[3] = '=';
		p += 4;
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8;
		p[0] = B64[v >> 18];
		p[1] = B64[(v >> 12) & 63];
		p[2] = B64[(v >> 6) & 63];
		p[3] = '=';
		p += 4;
	}
	return p;
}

static inline uint8_t lower(uint8_t b) { return b >= 'A' && b <= 'Z' ? b + 32 : b; }

static int word_at(const uint8_t *d, uint32_t left, const char *w, uint32_t wl)
{
	if (left < wl)
		return 0;
	for (uint32_t i = 1; i < wl; i++)
		if (lower(d[i]) != (uint8_t)w[i])
			return 0;
	return 1;
}

/* The words' first two and second two letters, any case: PAIRS[b0 | b1 << 8] is 1 when a word may
 * start at b0 or at the byte before it. */
static uint8_t PAIRS[65536];
static const char *const WORDS[] = {"auth", "bearer", "cookie", "key", "pass",
				    "pwd", "secret", "sig", "session", "token"};

static void init_pairs(void)
{
	for (size_t w = 0; w < sizeof(WORDS) / sizeof(*WORDS); w++)
		for (int at = 0; at < 2; at++)
			for (int up = 0; up < 4; up++) {
				uint8_t a = WORDS[w][at] - (up & 1 ? 32 : 0), b = WORDS[w][at + 1] - (up & 2 ? 32 : 0);
				PAIRS[a | b << 8] = 1;
			}
}

/* The constant tables, filled when the library is loaded (fp_suspicious runs before any fp_new too). */
__attribute__((constructor)) static void init_tables(void)
{
	init_base64();
	init_pairs();
}

/* Whether one of the words starts at p (`left` bytes from there). */
static int word_here(const uint8_t *p, uint32_t left)
{
	switch (lower(*p)) {
	case 'a':
		return word_at(p, left, "auth", 4);
	case 'b':
		return word_at(p, left, "bearer", 6);
	case 'c':
		return word_at(p, left, "cookie", 6);
	case 'k':
		return word_at(p, left, "key", 3);
	case 'p':
		return word_at(p, left, "pass", 4) || word_at(p, left, "pwd", 3);
	case 's':
		return word_at(p, left, "secret", 6) || word_at(p, left, "sig", 3) || word_at(p, left, "session", 7);
	case 't':
		return word_at(p, left, "token", 5);
	}
	return 0;
}

/* agents/redact.py `_MAYBE` on the lower-cased payload: auth|cookie|token|key|pass|secret|sig|
 * session|pwd|bearer anywhere (a flagged payload goes to the Python redactor). Every word has
 * three letters at least, so its first two or its second two letters sit at an even offset: the
 * pairs there are looked up in PAIRS, and the words checked only where one may start. */
int fp_suspicious(const uint8_t *d, uint32_t n)
{
	for (uint32_t i = 0; i + 1 < n; i += 2) {
		if (!PAIRS[d[i] | d[i + 1] << 8])
			continue;
		if ((i && word_here(d + i - 1, n - i + 1)) || word_here(d + i, n - i))
			return 1;
	}
	return 0;
}

static int reserve(struct fp_ctx *c, uint64_t more)
{
	if (c->out_len + more <= c->out_cap)
		return 0;
	uint64_t cap = c->out_cap ? c->out_cap : 1 << 20;
	while (cap < c->out_len + more)
		cap *= 2;
	char *p = realloc(c->out, cap);
	if (!p)
		return -1;
	c->out = p;
	c->out_cap = cap;
	return 0;
}

static const char PAYLOAD_END[] = "\",\"redacted\":false";
static const char NO_PAYLOAD[] = "null,\"redacted\":false";

/* One ring record as both walks read it (fp_walk, fp_walk_cols). */
enum { RING_EVENT, RING_BUSY, RING_SKIP, RING_PYTHON };
struct ring_event {
	uint64_t next, ts; /* next: the record after it */
	int64_t ret;
	uint32_t pid, tid, size, dlen, plen; /* plen: the payload's bytes kept (snaplen) */
	int32_t fd;
	const uint8_t *data;
	struct tmpl *t; /* its socket's template, of the walk's form */
};

/* The record at cons: RING_BUSY (not committed yet), RING_SKIP (discarded: r->next), RING_PYTHON (Python
 * must encode it: c->why says why, c->role its socket's role), else RING_EVENT with r filled in. */
static inline int ring_event_at(struct fp_ctx *c, const uint8_t *buf, uint64_t cons, uint64_t base, uint64_t mask,
				int columns, struct ring_event *r)
{
	const uint8_t *at = buf + base + (cons & mask);
	uint32_t hdr;
	memcpy(&hdr, at, 4);
	if (hdr & RINGBUF_BUSY)
		return RING_BUSY;
	r->next = cons + (((hdr & RINGBUF_LEN) + RINGBUF_HDR + 7) & ~7ULL);
	if (hdr & RINGBUF_DISCARD)
		return RING_SKIP;
	const uint8_t *rec = at + RINGBUF_HDR;
	uint32_t reclen = hdr & RINGBUF_LEN;
	uint64_t ret_u;
	uint16_t sc;
	memcpy(&r->ts, rec, 8);
	memcpy(&ret_u, rec + 24, 8);
	r->ret = (int64_t)ret_u;
	memcpy(&r->pid, rec + 32, 4);
	memcpy(&r->tid, rec + 36, 4);
	memcpy(&r->fd, rec + 40, 4);
	memcpy(&r->size, rec + 44, 4);
	memcpy(&r->dlen, rec + 48, 4);
	memcpy(&sc, rec + 52, 2);
	c->why = WHY_OTHER;
	c->role = 0;
	if (reclen < REC_SIZE || r->dlen > reclen - REC_SIZE || r->ret < 0 || sc >= 32 || !(c->io_mask >> sc & 1))
		return RING_PYTHON;
	struct tkey k;
	uint32_t role = fp_role_get(c, r->pid, r->fd);
	make_key(&k, rec, role);
	struct tmpl *t = r->t = tmpl_find(c, &k);
	c->role = role;
	if (!t->used || !(columns ? (void *)t->cols : (void *)t->text)) { /* (a template of the other form) */
		c->why = WHY_TEMPLATE;
		return RING_PYTHON;
	}
	r->plen = r->dlen < c->snaplen ? r->dlen : c->snaplen;
	r->data = rec + REC_SIZE;
	if (r->plen && c->redact && fp_suspicious(r->data, r->plen)) {
		c->why = WHY_PAYLOAD;
		return RING_PYTHON;
	}
	return RING_EVENT;
}

/* Walk the ring from `cons` to `prod` (record at position p sits at buf + base + (p & mask)
 * behind its 8-byte header), appending each event's JSON to c->out, comma-separated, for a
 * batch with room for `room_events` events and `room_bytes` bytes (an event counts its JSON
 * plus one separator; `batch_open`: the batch already holds events, so even the first event
 * must fit). Stops at the end of committed records, after `limit` records, when the batch is
 * full (FP_FULL), or at a record Python must encode (FP_PYTHON: c->cons is that record).
 * c->out is reset at each call; Python releases c->cons to the kernel once it took the output. */
int fp_walk(struct fp_ctx *c, const uint8_t *buf, uint64_t cons, uint64_t prod, uint64_t base, uint64_t mask,
	    uint64_t limit, uint64_t room_events, uint64_t room_bytes, int batch_open)
{
	uint64_t done = 0, events = 0, bytes = 0, n = c->n;
	int status = FP_IDLE;

	c->out_len = 0;
	if (!room_events) {
		status = FP_FULL;
		goto out;
	}
	while (cons < prod && done < limit) {
		struct ring_event r;
		int got = ring_event_at(c, buf, cons, base, mask, 0, &r);
		if (got == RING_BUSY)
			break; /* not committed yet */
		if (got == RING_SKIP) {
			cons = r.next;
			done++;
			continue;
		}
		if (got == RING_PYTHON) {
			status = FP_PYTHON;
			break;
		}
		struct tmpl *t = r.t;
		if (reserve(c, t->at[NSLOTS] + t->len[NSLOTS] + NSLOTS * 20 + (MAX_SNAP / 3 + 1) * 4 + 64)) {
			status = FP_FULL; /* out of memory: hand over what is there */
			break;
		}
		char *start = c->out + c->out_len, *p = start;
		if (events)
			*p++ = ',';
		const char *lit = t->text;
		uint64_t vals[NSLOTS - 1] = {r.ts + (uint64_t)c->toff, n + 1, r.tid, (uint64_t)r.ret, r.size};
		for (int s = 0; s < NSLOTS - 1; s++) {
			memcpy(p, lit + t->at[s], t->len[s]);
			p = put_u64(p + t->len[s], vals[s]);
		}
		memcpy(p, lit + t->at[NSLOTS - 1], t->len[NSLOTS - 1]);
		p += t->len[NSLOTS - 1];
		if (r.dlen) {
			*p++ = '"';
			p = put_base64(p, r.data, r.plen);
			memcpy(p, PAYLOAD_END, sizeof(PAYLOAD_END) - 1);
			p += sizeof(PAYLOAD_END) - 1;
		} else {
			memcpy(p, NO_PAYLOAD, sizeof(NO_PAYLOAD) - 1);
			p += sizeof(NO_PAYLOAD) - 1;
		}
		memcpy(p, lit + t->at[NSLOTS], t->len[NSLOTS]);
		p += t->len[NSLOTS];
		uint64_t cost = (p - start) + (events ? 0 : 1); /* its JSON and one separator */
		if ((events || batch_open) && bytes + cost > room_bytes) {
			status = FP_FULL; /* the batch is full: this record opens the next one */
			break;
		}
		c->out_len += p - start;
		if (t->learn)
			role_remember(c, r.pid, r.fd, t->learn); /* a UDP socket's role, learnt by its template */
		n++;
		events++;
		bytes += cost;
		cons = r.next;
		done++;
		if (events >= room_events) {
			status = FP_FULL;
			break;
		}
	}
out:
	c->n = n;
	c->cons = cons;
	c->done = done;
	c->events = events;
	c->bytes = bytes;
	return status;
}

/* ---- the syscall-columns form ------------------------------------------------------------- */

/* The open batch's rows live here until fp_cols_close writes the record's `strings` and `columns`
 * exactly as schemas/syscall_columns.encode_columns writes them (msgspec's msgpack: the smallest
 * form of each integer, string and array): a column is one value when every event has it (not the
 * first field), else an array of a value per event; a string field's values are indexes into the
 * record's table of distinct strings, numbered in order of first use, field by field. The values of
 * a template come from Python already encoded (fp_add_columns_template), so what an event says is
 * still decided there; this code writes only integers, payloads (bin), booleans and nulls. */

static int mp_uint_len(const uint8_t *p, uint64_t left, uint32_t hdr, uint64_t *out)
{
	uint64_t v = 0;
	if (left < 1 + (uint64_t)hdr)
		return -1;
	for (uint32_t i = 0; i < hdr; i++)
		v = v << 8 | p[1 + i];
	*out = v;
	return 0;
}

/* The length of the msgpack value at p (nil, bool, int, str, bin: what an event's fields are), or -1. */
static int64_t mp_skip(const uint8_t *p, uint64_t left)
{
	uint64_t n;
	if (!left)
		return -1;
	uint8_t b = p[0];
	if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
		return 1;
	if (b >= 0xa0 && b <= 0xbf)
		n = 1 + (b & 31);
	else if (b >= 0xcc && b <= 0xcf)
		n = 1 + (1u << (b - 0xcc));
	else if (b >= 0xd0 && b <= 0xd3)
		n = 1 + (1u << (b - 0xd0));
	else if (b == 0xd9 || b == 0xc4) {
		if (mp_uint_len(p, left, 1, &n))
			return -1;
		n += 2;
	} else if (b == 0xda || b == 0xc5) {
		if (mp_uint_len(p, left, 2, &n))
			return -1;
		n += 3;
	} else if (b == 0xdb || b == 0xc6) {
		if (mp_uint_len(p, left, 4, &n))
			return -1;
		n += 5;
	} else
		return -1;
	return n <= left ? (int64_t)n : -1;
}

/* An integer (fits int64) at p, of length len: 0, or -1 if it is not one. */
static int mp_int(const uint8_t *p, uint32_t len, int64_t *v)
{
	uint8_t b = p[0];
	uint64_t u = 0;
	if (b <= 0x7f) {
		*v = b;
		return 0;
	}
	if (b >= 0xe0) {
		*v = (int8_t)b;
		return 0;
	}
	for (uint32_t i = 1; i < len; i++)
		u = u << 8 | p[i];
	switch (b) {
	case 0xcc: case 0xcd: case 0xce:
		*v = (int64_t)u;
		return 0;
	case 0xcf:
		if (u > INT64_MAX)
			return -1;
		*v = (int64_t)u;
		return 0;
	case 0xd0: *v = (int8_t)u; return 0;
	case 0xd1: *v = (int16_t)u; return 0;
	case 0xd2: *v = (int32_t)u; return 0;
	case 0xd3: *v = (int64_t)u; return 0;
	}
	return -1;
}

static uint8_t *put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--)
		*p++ = v >> (8 * i);
	return p;
}

/* An integer as msgspec writes it (at most 9 bytes). */
static uint8_t *put_int(uint8_t *p, int64_t v)
{
	if (v >= 0) {
		if (v < 128) {
			*p++ = v;
			return p;
		}
		if (v < 256) {
			*p++ = 0xcc;
			return put_be(p, v, 1);
		}
		if (v < 65536) {
			*p++ = 0xcd;
			return put_be(p, v, 2);
		}
		if (v < (1LL << 32)) {
			*p++ = 0xce;
			return put_be(p, v, 4);
		}
		*p++ = 0xcf;
		return put_be(p, v, 8);
	}
	if (v >= -32) {
		*p++ = (uint8_t)(int8_t)v;
		return p;
	}
	if (v >= -128) {
		*p++ = 0xd0;
		return put_be(p, (uint64_t)v, 1);
	}
	if (v >= -32768) {
		*p++ = 0xd1;
		return put_be(p, (uint64_t)v, 2);
	}
	if (v >= -(1LL << 31)) {
		*p++ = 0xd2;
		return put_be(p, (uint64_t)v, 4);
	}
	*p++ = 0xd3;
	return put_be(p, (uint64_t)v, 8);
}

static uint8_t *put_array(uint8_t *p, uint64_t n)
{
	if (n < 16) {
		*p++ = 0x90 | n;
		return p;
	}
	if (n < 65536) {
		*p++ = 0xdc;
		return put_be(p, n, 2);
	}
	*p++ = 0xdd;
	return put_be(p, n, 4);
}

static uint8_t *put_bin(uint8_t *p, const uint8_t *d, uint32_t n)
{
	if (n < 256) {
		*p++ = 0xc4;
		p = put_be(p, n, 1);
	} else if (n < 65536) {
		*p++ = 0xc5;
		p = put_be(p, n, 2);
	} else {
		*p++ = 0xc6;
		p = put_be(p, n, 4);
	}
	memcpy(p, d, n);
	return p + n;
}

/* Switch this context to the columns form: `nf` fields, each of kind kinds[i] (K_*, | K_ARRAY). */
int fp_cols_setup(struct fp_ctx *c, uint32_t nf, const uint8_t *kinds)
{
	if (nf == 0 || nf > NF_MAX || c->nrows)
		return -1;
	c->nf = nf;
	memcpy(c->kind, kinds, nf);
	c->cols_on = 1;
	fp_clear_templates(c); /* JSON templates are of no use to the columns loop */
	return 0;
}

/* A ccols of the msgpack array of an event's `nf` values at blob (the event's fields in order). */
static struct ccols *cols_new(struct fp_ctx *c, const uint8_t *blob, uint32_t len, uint32_t bound)
{
	uint32_t nf = c->nf, at;
	uint64_t n;
	if (!len)
		return NULL;
	if ((blob[0] & 0xf0) == 0x90) {
		n = blob[0] & 15;
		at = 1;
	} else if (blob[0] == 0xdc && len >= 3) {
		n = (uint32_t)blob[1] << 8 | blob[2];
		at = 3;
	} else {
		return NULL;
	}
	if (n != nf)
		return NULL;
	size_t head = (sizeof(struct ccols) + 7) & ~(size_t)7;
	struct ccols *t = malloc(head + nf * 12 + len);
	if (!t)
		return NULL;
	t->next = NULL;
	t->used = t->sgen = 0;
	t->bound = bound;
	t->off = (uint32_t *)((uint8_t *)t + head);
	t->len = t->off + nf;
	t->sidx = (int32_t *)(t->len + nf);
	t->blob = (uint8_t *)(t->sidx + nf);
	memcpy(t->blob, blob, len);
	for (uint32_t f = 0; f < nf; f++) {
		int64_t l = mp_skip(blob + at, len - at);
		if (l < 0) {
			free(t);
			return NULL;
		}
		t->off[f] = at;
		t->len[f] = l;
		at += l;
	}
	if (at != len) {
		free(t);
		return NULL;
	}
	return t;
}

/* The columns template of the socket of the record at `rec` seen with role `role`: the msgpack array
 * of a decoded event's values (its varying fields' values ignored), `bound` its pipeline._bound
 * without a payload. Returns 0, or -1 if malformed. */
int fp_add_columns_template(struct fp_ctx *c, const uint8_t *rec, uint32_t role, const uint8_t *blob, uint32_t len,
			    uint32_t bound, uint32_t learn)
{
	struct tkey k;
	if (!c->cols_on)
		return -1;
	make_key(&k, rec, role);
	struct ccols *cols = cols_new(c, blob, len, bound);
	if (!cols)
		return -1;
	if (c->ntmpl > TMPL_MAX)
		fp_clear_templates(c);
	struct tmpl *t = tmpl_find(c, &k);
	if (t->used) {
		free(t->text);
		cols_drop(c, t->cols);
	} else {
		c->ntmpl++;
	}
	t->key = k;
	t->used = 1;
	t->learn = learn;
	t->text = NULL;
	t->cols = cols;
	return 0;
}

static int grow(void **p, uint64_t *cap, uint64_t need, size_t size, uint64_t first)
{
	if (need <= *cap)
		return 0;
	uint64_t n = *cap ? *cap : first;
	while (n < need)
		n *= 2;
	void *q = realloc(*p, n * size);
	if (!q)
		return -1;
	*p = q;
	*cap = n;
	return 0;
}

static struct crow *row_push(struct fp_ctx *c, uint32_t dlen)
{
	if (grow((void **)&c->rows, &c->rows_cap, c->nrows + 1, sizeof(struct crow), 1024) ||
	    grow((void **)&c->pay, &c->pay_cap, c->pay_len + dlen, 1, 1 << 16))
		return NULL;
	return &c->rows[c->nrows];
}

/* One event Python encoded (a record C handed back, a loss marker): the msgpack array of its values,
 * `bound` its pipeline._bound. Appended to the open batch; 0, or -1 if malformed or out of memory. */
int fp_cols_add_event(struct fp_ctx *c, const uint8_t *blob, uint32_t len, uint32_t bound)
{
	if (!c->cols_on)
		return -1;
	struct ccols *t = cols_new(c, blob, len, bound);
	if (!t)
		return -1;
	struct crow r = {.t = t};
	for (uint32_t f = 0; f < c->nf; f++) {
		const uint8_t *p = t->blob + t->off[f];
		uint32_t l = t->len[f];
		int k = c->kind[f] & ~K_ARRAY;
		if (k >= K_TS && k <= K_SIZE) {
			if (k == K_SIZE && p[0] == 0xc0)
				continue;
			if (mp_int(p, l, &r.v[k - K_TS]))
				goto bad;
			if (k == K_SIZE)
				r.flags |= ROW_SIZE;
		} else if (k == K_DATA) {
			if (p[0] == 0xc0)
				continue;
			uint32_t h = p[0] == 0xc4 ? 2 : p[0] == 0xc5 ? 3 : p[0] == 0xc6 ? 5 : 0;
			if (!h)
				goto bad;
			r.flags |= ROW_DATA;
			r.dlen = l - h;
			r.doff = h; /* (within the blob until copied below) */
		} else if (k == K_REDACTED) {
			if (p[0] != 0xc2 && p[0] != 0xc3)
				goto bad;
			if (p[0] == 0xc3)
				r.flags |= ROW_REDACTED;
		}
	}
	struct crow *row = row_push(c, r.dlen);
	if (!row)
		goto bad;
	if (r.flags & ROW_DATA) {
		uint32_t f = 0;
		while ((c->kind[f] & ~K_ARRAY) != K_DATA)
			f++;
		memcpy(c->pay + c->pay_len, t->blob + t->off[f] + r.doff, r.dlen);
		r.doff = c->pay_len;
		c->pay_len += r.dlen;
	}
	t->used = c->gen;
	t->next = c->own;
	c->own = t;
	*row = r;
	c->nrows++;
	return 0;
bad:
	free(t);
	return -1;
}

/* fp_walk for the columns form: each send/receive a row of the open batch (its template and its
 * values), counted by its pipeline._bound (the template's, plus the payload's bytes) against
 * `room_bytes`. Same stops, same hand-backs as fp_walk; c->out is not touched. */
int fp_walk_cols(struct fp_ctx *c, const uint8_t *buf, uint64_t cons, uint64_t prod, uint64_t base, uint64_t mask,
		 uint64_t limit, uint64_t room_events, uint64_t room_bytes, int batch_open)
{
	uint64_t done = 0, events = 0, bytes = 0, n = c->n;
	int status = FP_IDLE;

	if (!room_events) {
		status = FP_FULL;
		goto out;
	}
	while (cons < prod && done < limit) {
		struct ring_event r;
		int got = ring_event_at(c, buf, cons, base, mask, 1, &r);
		if (got == RING_BUSY)
			break; /* not committed yet */
		if (got == RING_SKIP) {
			cons = r.next;
			done++;
			continue;
		}
		if (got == RING_PYTHON) {
			status = FP_PYTHON;
			break;
		}
		struct tmpl *t = r.t;
		struct ccols *cols = t->cols;
		uint64_t cost = cols->bound + (r.dlen ? r.plen : 0);
		if ((events || batch_open) && bytes + cost > room_bytes) {
			status = FP_FULL; /* the batch is full: this record opens the next one */
			break;
		}
		struct crow *row = row_push(c, r.plen);
		if (!row) {
			status = FP_FULL; /* out of memory: hand over what is there */
			break;
		}
		row->t = cols;
		row->v[0] = (int64_t)(r.ts + (uint64_t)c->toff);
		row->v[1] = (int64_t)(n + 1);
		row->v[2] = r.tid;
		row->v[3] = r.ret;
		row->v[4] = r.size;
		row->flags = ROW_SIZE;
		row->dlen = 0;
		row->doff = 0;
		if (r.dlen) {
			row->flags |= ROW_DATA;
			row->dlen = r.plen;
			row->doff = c->pay_len;
			memcpy(c->pay + c->pay_len, r.data, r.plen);
			c->pay_len += r.plen;
		}
		cols->used = c->gen;
		c->nrows++;
		if (t->learn)
			role_remember(c, r.pid, r.fd, t->learn);
		n++;
		events++;
		bytes += cost;
		cons = r.next;
		done++;
		if (events >= room_events) {
			status = FP_FULL;
			break;
		}
	}
out:
	c->n = n;
	c->cons = cons;
	c->done = done;
	c->events = events;
	c->bytes = bytes;
	return status;
}

static uint64_t str_hash(const uint8_t *p, uint32_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (uint32_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return mix(h);
}

/* The index of the string (its msgpack bytes) in the open record's table, added if new; -1: no memory. */
static int32_t str_index(struct fp_ctx *c, const uint8_t *p, uint32_t n)
{
	if ((uint64_t)(c->sh_n + 1) * 2 > c->sh_cap) {
		uint32_t cap = c->sh_cap ? c->sh_cap * 2 : 1024;
		struct sent *sh = calloc(cap, sizeof(*sh));
		if (!sh)
			return -1;
		for (uint32_t i = 0; i < c->sh_cap; i++) {
			struct sent *e = &c->sh[i];
			if (e->gen != c->strgen)
				continue;
			uint32_t j = str_hash(e->p, e->len) & (cap - 1);
			while (sh[j].gen == c->strgen)
				j = (j + 1) & (cap - 1);
			sh[j] = *e;
		}
		free(c->sh);
		c->sh = sh;
		c->sh_cap = cap;
	}
	uint32_t j = str_hash(p, n) & (c->sh_cap - 1);
	for (;;) {
		struct sent *e = &c->sh[j];
		if (e->gen != c->strgen)
			break;
		if (e->len == n && !memcmp(e->p, p, n))
			return e->idx;
		j = (j + 1) & (c->sh_cap - 1);
	}
	uint64_t cap = c->sp_cap;
	if (c->sh_n >= cap) {
		if (grow((void **)&c->sp, &cap, c->sh_n + 1, sizeof(*c->sp), 256))
			return -1;
		uint32_t *sl = realloc(c->sl, cap * sizeof(*sl));
		if (!sl)
			return -1;
		c->sl = sl;
		c->sp_cap = cap;
	}
	struct sent *e = &c->sh[j];
	e->p = p;
	e->len = n;
	e->idx = c->sh_n;
	e->gen = c->strgen;
	c->sp[c->sh_n] = p;
	c->sl[c->sh_n] = n;
	return c->sh_n++;
}

static int out_room(struct fp_ctx *c, uint64_t more) { return reserve(c, more); }

#define OUT (uint8_t *)(c->out + c->out_len)
#define ADVANCE(p) (c->out_len = (char *)(p) - c->out)

static void batch_reset(struct fp_ctx *c)
{
	c->nrows = 0;
	c->pay_len = 0;
	while (c->own) {
		struct ccols *t = c->own;
		c->own = t->next;
		free(t);
	}
	c->gen++;
}

/* Close the open batch: c->out holds its record's `strings` array, the key "columns" and the
 * columns array (Python writes the head before them: syscall_columns.encode_columns' document,
 * keys in its order). At least one row. Returns 0, or -1 (out of memory: the batch stays open). */
int fp_cols_close(struct fp_ctx *c)
{
	const uint64_t n = c->nrows, gen = ++c->strgen; /* (a new table, even after a failed attempt) */
	const uint32_t nf = c->nf;
	struct crow *rows = c->rows;
	c->out_len = 0;
	if (!n)
		return -1;
	c->sh_n = 0;
	for (uint32_t f = 0; f < nf; f++) { /* the strings, in order of first use, field by field */
		if ((c->kind[f] & ~K_ARRAY) != K_STR)
			continue;
		for (uint64_t i = 0; i < n; i++) {
			struct ccols *t = rows[i].t;
			if (t->sgen != gen) {
				t->sgen = gen;
				memset(t->sidx, 0xff, nf * sizeof(*t->sidx));
			}
			if (t->sidx[f] < 0 && (t->sidx[f] = str_index(c, t->blob + t->off[f], t->len[f])) < 0)
				return -1;
		}
	}
	uint64_t strings = 0;
	for (uint32_t i = 0; i < c->sh_n; i++)
		strings += c->sl[i];
	if (out_room(c, 5 + strings + 8 + 3))
		return -1;
	uint8_t *p = put_array(OUT, c->sh_n);
	for (uint32_t i = 0; i < c->sh_n; i++) {
		memcpy(p, c->sp[i], c->sl[i]);
		p += c->sl[i];
	}
	*p++ = 0xa7;
	memcpy(p, "columns", 7);
	p += 7;
	p = put_array(p, nf);
	ADVANCE(p);
	for (uint32_t f = 0; f < nf; f++) {
		const int k = c->kind[f] & ~K_ARRAY, always = c->kind[f] & K_ARRAY;
		int same = !always;
		const struct crow *r0 = &rows[0];
		if (k == K_CONST) {
			const struct ccols *t0 = r0->t, *prev = t0;
			const uint8_t *v0 = t0->blob + t0->off[f];
			const uint32_t l0 = t0->len[f];
			for (uint64_t i = 1; i < n && same; i++) {
				const struct ccols *t = rows[i].t;
				if (t != prev) {
					same = t->len[f] == l0 && !memcmp(t->blob + t->off[f], v0, l0);
					prev = t;
				}
			}
			if (same) {
				if (out_room(c, l0))
					return -1;
				memcpy(OUT, v0, l0);
				c->out_len += l0;
				continue;
			}
			if (out_room(c, 5))
				return -1;
			ADVANCE(put_array(OUT, n));
			for (uint64_t i = 0; i < n; i++) {
				const struct ccols *t = rows[i].t;
				if (out_room(c, t->len[f]))
					return -1;
				memcpy(OUT, t->blob + t->off[f], t->len[f]);
				c->out_len += t->len[f];
			}
		} else if (k == K_STR) {
			const int32_t s0 = r0->t->sidx[f];
			for (uint64_t i = 1; i < n && same; i++)
				same = rows[i].t->sidx[f] == s0;
			if (out_room(c, 5 + n * 9))
				return -1;
			p = OUT;
			if (same) {
				p = put_int(p, s0);
			} else {
				p = put_array(p, n);
				for (uint64_t i = 0; i < n; i++)
					p = put_int(p, rows[i].t->sidx[f]);
			}
			ADVANCE(p);
		} else if (k == K_DATA) {
			const int has0 = r0->flags & ROW_DATA;
			const uint8_t *d0 = c->pay + r0->doff;
			for (uint64_t i = 1; i < n && same; i++) {
				const struct crow *r = &rows[i];
				same = (r->flags & ROW_DATA) == has0 &&
				       (!has0 || (r->dlen == r0->dlen && !memcmp(c->pay + r->doff, d0, r0->dlen)));
			}
			uint64_t m = same ? 1 : n;
			if (out_room(c, 5 + m * 5 + (same ? r0->dlen : c->pay_len)))
				return -1;
			p = OUT;
			if (!same)
				p = put_array(p, n);
			for (uint64_t i = 0; i < m; i++) {
				const struct crow *r = &rows[i];
				if (r->flags & ROW_DATA)
					p = put_bin(p, c->pay + r->doff, r->dlen);
				else
					*p++ = 0xc0;
			}
			ADVANCE(p);
		} else if (k == K_REDACTED) {
			const int red0 = r0->flags & ROW_REDACTED;
			for (uint64_t i = 1; i < n && same; i++)
				same = (rows[i].flags & ROW_REDACTED) == red0;
			if (out_room(c, 5 + n))
				return -1;
			p = OUT;
			if (same) {
				*p++ = red0 ? 0xc3 : 0xc2;
			} else {
				p = put_array(p, n);
				for (uint64_t i = 0; i < n; i++)
					*p++ = rows[i].flags & ROW_REDACTED ? 0xc3 : 0xc2;
			}
			ADVANCE(p);
		} else { /* ts, n, tid, res, size */
			const int s = k - K_TS, nullable = k == K_SIZE;
			const int64_t v0 = r0->v[s];
			const int has0 = !nullable || (r0->flags & ROW_SIZE);
			for (uint64_t i = 1; i < n && same; i++) {
				const struct crow *r = &rows[i];
				const int has = !nullable || (r->flags & ROW_SIZE);
				same = has == has0 && (!has || r->v[s] == v0);
			}
			uint64_t m = same ? 1 : n;
			if (out_room(c, 5 + m * 9))
				return -1;
			p = OUT;
			if (!same)
				p = put_array(p, n);
			for (uint64_t i = 0; i < m; i++) {
				const struct crow *r = &rows[i];
				if (nullable && !(r->flags & ROW_SIZE))
					*p++ = 0xc0;
				else
					p = put_int(p, r->v[s]);
			}
			ADVANCE(p);
		}
	}
	batch_reset(c);
	return 0;
}

/* ---- lifetime ----------------------------------------------------------------------------- */

struct fp_ctx *fp_new(void)
{
	struct fp_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->roles = calloc(ROLE_SLOTS, sizeof(*c->roles));
	c->tmpl = calloc(TMPL_SLOTS, sizeof(*c->tmpl));
	c->gen = 1; /* (a ccols' used/sgen start at 0: of no batch) */
	if (!c->roles || !c->tmpl) {
		free(c->roles);
		free(c->tmpl);
		free(c);
		return NULL;
	}
	return c;
}

void fp_free(struct fp_ctx *c)
{
	if (!c)
		return;
	fp_clear_templates(c);
	batch_reset(c);
	free(c->tmpl);
	free(c->roles);
	free(c->out);
	free(c->rows);
	free(c->pay);
	free(c->sh);
	free(c->sp);
	free(c->sl);
	free(c);
}

/* The ring's data pages (producer page + the data area mapped twice), read-only. */
void *fp_map(int fd, uint64_t len, uint64_t offset)
{
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)offset);
	return p == MAP_FAILED ? NULL : p;
}

int fp_unmap(void *p, uint64_t len) { return munmap(p, len); }
