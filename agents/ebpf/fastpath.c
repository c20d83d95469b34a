/* The agent's native per-event loop: BPF ring records -> the JSON of a syscall batch's events.
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

struct tmpl {
	struct tkey key;
	uint8_t used, learn;
	char *text; /* the literal pieces around the placeholders, back to back */
	uint32_t at[NSLOTS + 1], len[NSLOTS + 1];
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

void fp_clear_templates(struct fp_ctx *c)
{
	for (uint32_t i = 0; i < TMPL_SLOTS; i++)
		if (c->tmpl[i].used) {
			free(c->tmpl[i].text);
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
	if (t->used)
		free(t->text);
	else
		c->ntmpl++;
	t->key = k;
	t->used = 1;
	t->learn = learn;
	t->text = lit;
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

/* agents/redact.py `_MAYBE` on the lower-cased payload: auth|cookie|token|key|pass|secret|sig|
 * session|pwd|bearer anywhere (a flagged payload goes to the Python redactor). */
int fp_suspicious(const uint8_t *d, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *p = d + i;
		uint32_t left = n - i;
		switch (lower(*p)) {
		case 'a':
			if (word_at(p, left, "auth", 4))
				return 1;
			break;
		case 'b':
			if (word_at(p, left, "bearer", 6))
				return 1;
			break;
		case 'c':
			if (word_at(p, left, "cookie", 6))
				return 1;
			break;
		case 'k':
			if (word_at(p, left, "key", 3))
				return 1;
			break;
		case 'p':
			if (word_at(p, left, "pass", 4) || word_at(p, left, "pwd", 3))
				return 1;
			break;
		case 's':
			if (word_at(p, left, "secret", 6) || word_at(p, left, "sig", 3) || word_at(p, left, "session", 7))
				return 1;
			break;
		case 't':
			if (word_at(p, left, "token", 5))
				return 1;
			break;
		}
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
	const uint32_t snaplen = c->snaplen;
	struct tkey k;

	c->out_len = 0;
	if (!room_events) {
		status = FP_FULL;
		goto out;
	}
	while (cons < prod && done < limit) {
		const uint8_t *at = buf + base + (cons & mask);
		uint32_t hdr;
		memcpy(&hdr, at, 4);
		if (hdr & RINGBUF_BUSY)
			break; /* not committed yet */
		uint64_t next = cons + (((hdr & RINGBUF_LEN) + RINGBUF_HDR + 7) & ~7ULL);
		if (hdr & RINGBUF_DISCARD) {
			cons = next;
			done++;
			continue;
		}
		const uint8_t *rec = at + RINGBUF_HDR;
		uint32_t reclen = hdr & RINGBUF_LEN;
		uint64_t ts, ret_u;
		int64_t ret;
		uint32_t pid, tid, size, dlen;
		int32_t fd;
		uint16_t sc;
		memcpy(&ts, rec, 8);
		memcpy(&ret_u, rec + 24, 8);
		ret = (int64_t)ret_u;
		memcpy(&pid, rec + 32, 4);
		memcpy(&tid, rec + 36, 4);
		memcpy(&fd, rec + 40, 4);
		memcpy(&size, rec + 44, 4);
		memcpy(&dlen, rec + 48, 4);
		memcpy(&sc, rec + 52, 2);
		c->why = WHY_OTHER;
		c->role = 0;
		if (reclen < REC_SIZE || dlen > reclen - REC_SIZE || ret < 0 || sc >= 32 || !(c->io_mask >> sc & 1)) {
			status = FP_PYTHON;
			break;
		}
		uint32_t role = fp_role_get(c, pid, fd);
		make_key(&k, rec, role);
		struct tmpl *t = tmpl_find(c, &k);
		c->role = role;
		if (!t->used) {
			c->why = WHY_TEMPLATE;
			status = FP_PYTHON;
			break;
		}
		uint32_t plen = dlen < snaplen ? dlen : snaplen;
		const uint8_t *data = rec + REC_SIZE;
		if (plen && c->redact && fp_suspicious(data, plen)) {
			c->why = WHY_PAYLOAD;
			status = FP_PYTHON;
			break;
		}
		if (reserve(c, t->at[NSLOTS] + t->len[NSLOTS] + NSLOTS * 20 + (MAX_SNAP / 3 + 1) * 4 + 64)) {
			status = FP_FULL; /* out of memory: hand over what is there */
			break;
		}
		char *start = c->out + c->out_len, *p = start;
		if (events)
			*p++ = ',';
		const char *lit = t->text;
		uint64_t vals[NSLOTS - 1] = {ts + (uint64_t)c->toff, n + 1, tid, (uint64_t)ret, size};
		for (int s = 0; s < NSLOTS - 1; s++) {
			memcpy(p, lit + t->at[s], t->len[s]);
			p = put_u64(p + t->len[s], vals[s]);
		}
		memcpy(p, lit + t->at[NSLOTS - 1], t->len[NSLOTS - 1]);
		p += t->len[NSLOTS - 1];
		if (dlen) {
			*p++ = '"';
			p = put_base64(p, data, plen);
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
			role_remember(c, pid, fd, t->learn); /* a UDP socket's role, learnt by its template */
		n++;
		events++;
		bytes += cost;
		cons = next;
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

/* ---- lifetime ----------------------------------------------------------------------------- */

struct fp_ctx *fp_new(void)
{
	init_base64(); /* idempotent: the same table every time */
	struct fp_ctx *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->roles = calloc(ROLE_SLOTS, sizeof(*c->roles));
	c->tmpl = calloc(TMPL_SLOTS, sizeof(*c->tmpl));
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
	free(c->tmpl);
	free(c->roles);
	free(c->out);
	free(c);
}

/* The ring's data pages (producer page + the data area mapped twice), read-only. */
void *fp_map(int fd, uint64_t len, uint64_t offset)
{
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, (off_t)offset);
	return p == MAP_FAILED ? NULL : p;
}

int fp_unmap(void *p, uint64_t len) { return munmap(p, len); }
