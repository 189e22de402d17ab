/* ingest._kvfast: kv_events rows of kv.alloc / kv.free / kv.transfer / hicache.load spans, and
 * spec_steps rows of request roots, from their attribute JSON, in C (spec_rows: see its section).
 *
 * ingest/sql/derive_kv_events.sql is the definition of these rows; this file computes the same
 * rows for the spans whose attributes have the plain shapes producers write, and declines every
 * other span, which then goes through that SQL (ingest/kvfast.py). A span declines when its
 * attribute text is not a JSON object this parser reads (a key with an escape, a key of ours
 * given twice), or when a value the row reads is not in its plain shape:
 *   - kv.page_ids: an array of JSON integers in int32 range;
 *   - kv.page_ranges: an array of JSON integers of even length, each in [0, 2^31-1], each pair's
 *     last >= its first, at most MAX_RANGE_PAGES pages in all (else the SQL writes page_error);
 *   - tp_rank, kv.transfer.dst_rank, kv.page_size: a JSON integer in int32 range;
 *   - kv.transfer.bytes, hicache.num_tokens: a JSON integer in int64 range;
 *   - kv.pool, kv.free.mode, kv.free.reason, kv.transfer.backend, kv.transfer.dst_instance,
 *     bootstrap_room: a JSON string without escapes (bootstrap_room "0x..." also ASCII);
 *   - hicache.layer_done_offsets_ns: an array of JSON integers in int64 range.
 * A value the row does not read for the span's op (tp_rank of a transfer, the dst_* and
 * bootstrap_room of the others, layer offsets of all but load) is skipped as any other key is.
 * tests/test_ingest_kvfast.py holds the two paths to the same rows, span by span.
 *
 * kv_rows(offsets, data, rows, ops) reads an Arrow string array (its int32 offsets and data
 * buffers, the array's offset applied by the caller) at the row numbers `rows` (int64), each
 * with its op (int8: 1 alloc, 2 free, 3 transfer, 4 load), and returns the output columns as
 * buffers (see ingest/kvfast.py). The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DECLINE 1
#define NOMEM 2
#define MAX_RANGE_PAGES 4194304
#define MAX_DEPTH 64

enum { OP_ALLOC = 1, OP_FREE = 2, OP_TRANSFER = 3, OP_LOAD = 4 };

/* ------------------------------------------------------------------------------ buffers */

#include "_cbuf.h"

/* A string column: int32 offsets (n + 1), data, one validity byte a row. */
typedef struct {
    Buf off, data, valid;
} StrCol;

static int strcol_row(StrCol *c, const uint8_t *s, size_t n, int valid) {
    if (valid && n && buf_put(&c->data, s, n)) return NOMEM;
    if (c->data.len > INT32_MAX) return NOMEM;
    PUT_VAL(&c->off, int32_t, (int32_t)c->data.len);
    PUT_VAL(&c->valid, uint8_t, (uint8_t)(valid != 0));
    return 0;
}

static void strcol_free(StrCol *c) {
    buf_free(&c->off);
    buf_free(&c->data);
    buf_free(&c->valid);
}

/* An integer column: values and one validity byte a row. */
typedef struct {
    Buf v, valid;
} IntCol;

static void intcol_free(IntCol *c) {
    buf_free(&c->v);
    buf_free(&c->valid);
}

/* ------------------------------------------------------------------------------ JSON reading */

typedef struct {
    const uint8_t *p, *end;
} J;

typedef struct {
    const uint8_t *p;
    size_t n;
} Slice;

static inline void j_ws(J *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

/* At a string: its raw inner bytes and whether they hold a backslash. */
static int j_string(J *j, Slice *s, int *esc) {
    const uint8_t *p = j->p, *end = j->end;
    if (p >= end || *p != '"') return DECLINE;
    const uint8_t *start = ++p;
    int e = 0;
    while (p < end && *p != '"') {
        if (*p == '\\') {
            e = 1;
            p++;
        } else if (*p < 0x20) {
            return DECLINE;
        }
        p++;
    }
    if (p >= end) return DECLINE;
    s->p = start;
    s->n = (size_t)(p - start);
    *esc = e;
    j->p = p + 1;
    return 0;
}

/* An integer token (-?(0|[1-9][0-9]*), not followed by a fraction or exponent) in int64 range. */
static int j_int(J *j, int64_t *out) {
    const uint8_t *p = j->p, *end = j->end;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') return DECLINE;
    uint64_t v = 0;
    if (*p == '0') {
        p++;
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            uint64_t d = (uint64_t)(*p - '0');
            if (v > (UINT64_MAX - d) / 10) return DECLINE;
            v = v * 10 + d;
            p++;
        }
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9'))) return DECLINE;
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX) return DECLINE;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    j->p = p;
    return 0;
}

/* A number by the JSON grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int j_number(J *j) {
    const uint8_t *p = j->p, *end = j->end;
    if (p < end && *p == '-') p++;
    if (p >= end || *p < '0' || *p > '9') return DECLINE;
    if (*p++ != '0')
        while (p < end && *p >= '0' && *p <= '9') p++;
    if (p < end && *p == '.') {
        if (++p >= end || *p < '0' || *p > '9') return DECLINE;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return DECLINE;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 0;
}

/* Skip any JSON value (by the grammar; a string's escapes are not checked: the text is one of
 * our decoders' JSON writers', and a string the row reads declines on any escape). */
static int j_skip(J *j, int depth) {
    Slice s;
    int esc;
    if (depth > MAX_DEPTH) return DECLINE;
    j_ws(j);
    if (j->p >= j->end) return DECLINE;
    uint8_t c = *j->p;
    if (c == '"') return j_string(j, &s, &esc);
    if (c == '{' || c == '[') {
        uint8_t close = c == '{' ? '}' : ']';
        j->p++;
        j_ws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                j_ws(j);
                if (j_string(j, &s, &esc)) return DECLINE;
                j_ws(j);
                if (j->p >= j->end || *j->p++ != ':') return DECLINE;
            }
            if (j_skip(j, depth + 1)) return DECLINE;
            j_ws(j);
            if (j->p >= j->end) return DECLINE;
            if (*j->p == ',') {
                j->p++;
                continue;
            }
            if (*j->p++ != close) return DECLINE;
            return 0;
        }
    }
    static const char *const LITERALS[] = {"true", "false", "null"};
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(LITERALS[i]);
        if ((size_t)(j->end - j->p) >= n && memcmp(j->p, LITERALS[i], n) == 0) {
            j->p += n;
            return 0;
        }
    }
    return j_number(j);
}

/* After an object member: a ',' (*more = 1) or the closing '}' (*more = 0). */
static int j_member_end(J *j, int *more) {
    j_ws(j);
    if (j->p >= j->end) return DECLINE;
    uint8_t c = *j->p++;
    *more = c == ',';
    return c == ',' || c == '}' ? 0 : DECLINE;
}

/* An array of integers each in [lo, hi], appended to `out` as int32 or int64 (`wide`). */
static int j_int_array(J *j, Buf *out, int64_t lo, int64_t hi, int wide, size_t *count) {
    size_t n = 0, width = wide ? sizeof(int64_t) : sizeof(int32_t);
    j_ws(j);
    if (j->p >= j->end || *j->p != '[') return DECLINE;
    j->p++;
    j_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        *count = 0;
        return 0;
    }
    /* at most one value every two bytes of the rest of the text: room for all of them at once */
    if (buf_grow(out, ((size_t)(j->end - j->p) / 2 + 1) * width)) return NOMEM;
    char *dst = out->p + out->len;
    for (;;) {
        int64_t v;
        j_ws(j);
        if (j_int(j, &v) || v < lo || v > hi) return DECLINE;
        if (wide) {
            memcpy(dst + n * width, &v, sizeof v);
        } else {
            int32_t w = (int32_t)v;
            memcpy(dst + n * width, &w, sizeof w);
        }
        n++;
        j_ws(j);
        if (j->p >= j->end) return DECLINE;
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p++ != ']') return DECLINE;
        out->len += n * width;
        *count = n;
        return 0;
    }
}

/* ------------------------------------------------------------------------------ one span */

enum {
    K_PAGE_IDS, K_DST_INSTANCE, K_DST_RANK, K_TP_RANK, K_POOL, K_PAGE_SIZE, K_FREE_MODE, K_FREE_REASON,
    K_ROOM, K_BYTES, K_BACKEND, K_LAYERS, K_NUM_TOKENS, K_PAGE_RANGES, K_COUNT
};

static const char *const KEYS[K_COUNT] = {
    "kv.page_ids", "kv.transfer.dst_instance", "kv.transfer.dst_rank", "tp_rank", "kv.pool", "kv.page_size",
    "kv.free.mode", "kv.free.reason", "bootstrap_room", "kv.transfer.bytes", "kv.transfer.backend",
    "hicache.layer_done_offsets_ns", "hicache.num_tokens", "kv.page_ranges",
};

static int key_index(Slice k) {
    if (k.n < 7 || (k.p[0] != 'k' && k.p[0] != 't' && k.p[0] != 'b' && k.p[0] != 'h')) return -1;
    for (int i = 0; i < K_COUNT; i++) {
        size_t n = strlen(KEYS[i]);
        if (k.n == n && memcmp(k.p, KEYS[i], n) == 0) return i;
    }
    return -1;
}

/* Whether the row reads key `k` for op `op` (else its value is skipped unread). */
static int reads(int k, int op) {
    switch (k) {
    case K_DST_INSTANCE:
    case K_DST_RANK:
    case K_ROOM: return op == OP_TRANSFER;
    case K_TP_RANK: return op != OP_TRANSFER;
    case K_LAYERS: return op == OP_LOAD;
    default: return 1;
    }
}

typedef struct {
    Buf tmp_ids, tmp_ranges, tmp_runs, tmp_sort; /* scratch, reused span to span */
    Buf layers_tmp;
    /* output */
    Buf declined, pages_off, pages, lo, hi, n_pages, layers_off, layers, layers_valid;
    IntCol tp, page_size, bytes, num_tokens;
    StrCol instance, pool, free_mode, free_reason, room, backend;
    int64_t n_pages_total, n_layers_total;
} Out;

static void out_free(Out *o) {
    Buf *bufs[] = {&o->tmp_ids, &o->tmp_ranges, &o->tmp_runs, &o->tmp_sort, &o->layers_tmp, &o->declined, &o->pages_off,
                   &o->pages, &o->lo, &o->hi, &o->n_pages, &o->layers_off, &o->layers, &o->layers_valid};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
    intcol_free(&o->tp);
    intcol_free(&o->page_size);
    intcol_free(&o->bytes);
    intcol_free(&o->num_tokens);
    StrCol *strs[] = {&o->instance, &o->pool, &o->free_mode, &o->free_reason, &o->room, &o->backend};
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) strcol_free(strs[i]);
}

/* Sort page ids ascending: a run already in order is left as it is (most are), a short one by
 * insertion, a long one by an LSD radix sort of its four bytes (a byte equal in every id is
 * skipped: page ids below 2^16 take two passes), with `tmp` as the second buffer. */
static int sort_i32(int32_t *v, size_t n, Buf *tmp) {
    size_t i = 1;
    while (i < n && v[i - 1] <= v[i]) i++;
    if (i >= n) return 0;
    if (n <= 48) {
        for (; i < n; i++) {
            int32_t x = v[i];
            size_t k = i;
            while (k > 0 && v[k - 1] > x) {
                v[k] = v[k - 1];
                k--;
            }
            v[k] = x;
        }
        return 0;
    }
    tmp->len = 0;
    if (buf_grow(tmp, n * sizeof(uint32_t))) return NOMEM;
    uint32_t *a = (uint32_t *)(void *)v, *b = (uint32_t *)(void *)tmp->p;
    size_t count[4][256];
    memset(count, 0, sizeof count);
    for (i = 0; i < n; i++) {
        uint32_t x = a[i] ^ 0x80000000u; /* signed order as unsigned */
        a[i] = x;
        count[0][x & 0xff]++;
        count[1][(x >> 8) & 0xff]++;
        count[2][(x >> 16) & 0xff]++;
        count[3][x >> 24]++;
    }
    for (int pass = 0; pass < 4; pass++) {
        int shift = 8 * pass;
        size_t *c = count[pass];
        if (c[(a[0] >> shift) & 0xff] == n) continue; /* this byte is the same in every id */
        size_t sum = 0;
        for (int d = 0; d < 256; d++) {
            size_t k = c[d];
            c[d] = sum;
            sum += k;
        }
        for (i = 0; i < n; i++) b[c[(a[i] >> shift) & 0xff]++] = a[i];
        uint32_t *t = a;
        a = b;
        b = t;
    }
    if (a != (uint32_t *)(void *)v) memcpy(v, a, n * sizeof *a);
    uint32_t *out = (uint32_t *)(void *)v;
    for (i = 0; i < n; i++) out[i] ^= 0x80000000u;
    return 0;
}

/* The span's values as the row reads them; `have` bit k: key k given (and read). */
typedef struct {
    uint32_t have;
    int64_t ints[K_COUNT];
    Slice strs[K_COUNT];
    size_t n_ids, n_ranges, n_layers;
} Vals;

/* Parse one span's attribute object; 0, DECLINE or NOMEM. */
static int parse_span(Out *o, const uint8_t *p, size_t n, int op, Vals *v) {
    J j = {p, p + n};
    uint32_t seen = 0;
    memset(v, 0, sizeof *v);
    o->tmp_ids.len = o->tmp_ranges.len = o->layers_tmp.len = 0;
    j_ws(&j);
    if (j.p >= j.end || *j.p != '{') return DECLINE;
    j.p++;
    j_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
        goto done;
    }
    for (;;) {
        Slice key;
        int esc, rc;
        j_ws(&j);
        if (j_string(&j, &key, &esc) || esc) return DECLINE; /* an escaped key may spell one of ours */
        j_ws(&j);
        if (j.p >= j.end || *j.p++ != ':') return DECLINE;
        j_ws(&j);
        int k = key_index(key);
        if (k >= 0) {
            if (seen & (1u << k)) return DECLINE; /* the SQL's json_extract takes the first */
            seen |= 1u << k;
        }
        if (k < 0 || !reads(k, op)) {
            if (j_skip(&j, 1)) return DECLINE;
        } else {
            v->have |= 1u << k;
            switch (k) {
            case K_PAGE_IDS:
                if ((rc = j_int_array(&j, &o->tmp_ids, INT32_MIN, INT32_MAX, 0, &v->n_ids))) return rc;
                break;
            case K_PAGE_RANGES:
                if ((rc = j_int_array(&j, &o->tmp_ranges, 0, INT32_MAX, 1, &v->n_ranges))) return rc;
                break;
            case K_LAYERS:
                if ((rc = j_int_array(&j, &o->layers_tmp, INT64_MIN, INT64_MAX, 1, &v->n_layers))) return rc;
                break;
            case K_DST_RANK:
            case K_TP_RANK:
            case K_PAGE_SIZE:
                if (j_int(&j, &v->ints[k]) || v->ints[k] < INT32_MIN || v->ints[k] > INT32_MAX) return DECLINE;
                break;
            case K_BYTES:
            case K_NUM_TOKENS:
                if (j_int(&j, &v->ints[k])) return DECLINE;
                break;
            default: /* the string values */
                if (j_string(&j, &v->strs[k], &esc) || esc) return DECLINE;
                break;
            }
        }
        int more;
        if (j_member_end(&j, &more)) return DECLINE;
        if (!more) break;
    }
done:
    j_ws(&j);
    return j.p == j.end ? 0 : DECLINE;
}

typedef struct {
    int64_t lo, hi;
} Run;

/* The span's page list (int32) appended to o->pages past its length (which the caller advances
 * when the row is kept): derive_kv_events.sql's `pages`, `*np` of them. */
static int span_pages(Out *o, const Vals *v, size_t *np) {
    Buf *pg = &o->pages;
    size_t start = pg->len;
    int has_ids = (v->have >> K_PAGE_IDS) & 1, has_ranges = (v->have >> K_PAGE_RANGES) & 1;
    int sorted = 0;
    if (has_ids && buf_put(pg, o->tmp_ids.p, v->n_ids * sizeof(int32_t))) return NOMEM;
    if (has_ranges) {
        const int64_t *r = (const int64_t *)(const void *)o->tmp_ranges.p;
        size_t nr = v->n_ranges / 2;
        if (v->n_ranges % 2) return DECLINE;
        /* the runs in order of (first, last), as the SQL sorts them: a few a span */
        o->tmp_runs.len = 0;
        if (buf_grow(&o->tmp_runs, (nr + 1) * sizeof(Run))) return NOMEM;
        Run *runs = (Run *)(void *)o->tmp_runs.p;
        int64_t total = 0;
        for (size_t i = 0; i < nr; i++) {
            Run x = {r[2 * i], r[2 * i + 1]};
            if (x.hi < x.lo) return DECLINE;
            total += x.hi - x.lo + 1;
            if (total > MAX_RANGE_PAGES) return DECLINE;
            size_t k = i;
            while (k > 0 && (runs[k - 1].lo > x.lo || (runs[k - 1].lo == x.lo && runs[k - 1].hi > x.hi))) {
                runs[k] = runs[k - 1];
                k--;
            }
            runs[k] = x;
        }
        int disjoint = 1;
        for (size_t i = 1; i < nr; i++) disjoint &= runs[i].lo > runs[i - 1].hi;
        sorted = !has_ids && disjoint;
        if (buf_grow(pg, (size_t)total * sizeof(int32_t))) return NOMEM;
        int32_t *out = (int32_t *)(void *)(pg->p + pg->len);
        for (size_t i = 0; i < nr; i++)
            for (int64_t x = runs[i].lo; x <= runs[i].hi; x++) *out++ = (int32_t)x;
        pg->len += (size_t)total * sizeof(int32_t);
    }
    int32_t *a = (int32_t *)(void *)(pg->p + start);
    size_t n = (pg->len - start) / sizeof(int32_t);
    if (!sorted && sort_i32(a, n, &o->tmp_sort)) return NOMEM;
    if (has_ids && has_ranges && n) { /* the union: each page once */
        size_t w = 1;
        for (size_t i = 1; i < n; i++)
            if (a[i] != a[w - 1]) a[w++] = a[i];
        n = w;
    }
    pg->len = start; /* the caller keeps them */
    *np = n;
    return 0;
}

static int emit_declined(Out *o) {
    static const uint8_t none = 0;
    PUT_VAL(&o->declined, uint8_t, 1);
    PUT_VAL(&o->pages_off, int32_t, (int32_t)o->n_pages_total);
    PUT_VAL(&o->layers_off, int32_t, (int32_t)o->n_layers_total);
    PUT_VAL(&o->lo, int32_t, 0);
    PUT_VAL(&o->hi, int32_t, 0);
    PUT_VAL(&o->n_pages, int32_t, 0);
    PUT_VAL(&o->layers_valid, uint8_t, 0);
    IntCol *ints[] = {&o->tp, &o->page_size, &o->bytes, &o->num_tokens};
    for (size_t i = 0; i < 4; i++) {
        if (i < 2) {
            PUT_VAL(&ints[i]->v, int32_t, 0);
        } else {
            PUT_VAL(&ints[i]->v, int64_t, 0);
        }
        PUT_VAL(&ints[i]->valid, uint8_t, 0);
    }
    StrCol *strs[] = {&o->instance, &o->pool, &o->free_mode, &o->free_reason, &o->room, &o->backend};
    for (size_t i = 0; i < 6; i++)
        if (strcol_row(strs[i], &none, 0, 0)) return NOMEM;
    return 0;
}

static int emit_str(StrCol *c, const Vals *v, int k) {
    return strcol_row(c, v->strs[k].p, v->strs[k].n, (v->have >> k) & 1);
}

/* bootstrap_room as requests and request_stages store it: "0x5f3a" -> 16 zero-padded lower-case
 * hex digits (lpad, which also cuts to 16); other text as it is. */
static int emit_room(Out *o, const Vals *v, int op, int *declined) {
    uint8_t tmp[16];
    Slice s = v->strs[K_ROOM];
    if (op != OP_TRANSFER || !((v->have >> K_ROOM) & 1)) return strcol_row(&o->room, tmp, 0, 0);
    if (s.n >= 2 && s.p[0] == '0' && (s.p[1] == 'x' || s.p[1] == 'X')) {
        size_t n = s.n - 2, pad = n < 16 ? 16 - n : 0;
        for (size_t i = 0; i < n; i++)
            if (s.p[2 + i] >= 0x80) {
                *declined = 1;
                return 0;
            }
        memset(tmp, '0', pad);
        for (size_t i = 0; i + pad < 16; i++) {
            uint8_t c = s.p[2 + i];
            tmp[pad + i] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
        }
        return strcol_row(&o->room, tmp, 16, 1);
    }
    return strcol_row(&o->room, s.p, s.n, 1);
}

static int put_int(IntCol *c, const Vals *v, int k, int wide) {
    int have = (v->have >> k) & 1;
    if (wide) {
        PUT_VAL(&c->v, int64_t, have ? v->ints[k] : 0);
    } else {
        PUT_VAL(&c->v, int32_t, have ? (int32_t)v->ints[k] : 0);
    }
    PUT_VAL(&c->valid, uint8_t, (uint8_t)have);
    return 0;
}

static int one_row(Out *o, const uint8_t *p, size_t n, int op) {
    Vals v;
    size_t np = 0;
    int rc = parse_span(o, p, n, op, &v), declined = 0;
    if (rc == NOMEM) return rc;
    if (!rc) rc = span_pages(o, &v, &np);
    if (rc == NOMEM) return rc;
    if (rc) return emit_declined(o);
    /* bootstrap_room first: the one value that may still decline */
    size_t room_off = o->room.off.len, room_data = o->room.data.len, room_valid = o->room.valid.len;
    if ((rc = emit_room(o, &v, op, &declined))) return rc;
    if (declined) {
        o->room.off.len = room_off;
        o->room.data.len = room_data;
        o->room.valid.len = room_valid;
        return emit_declined(o);
    }
    if (o->n_pages_total + (int64_t)np > INT32_MAX || o->n_layers_total + (int64_t)v.n_layers > INT32_MAX)
        return NOMEM;
    const int32_t *pages = (const int32_t *)(const void *)(o->pages.p + o->pages.len);
    PUT_VAL(&o->declined, uint8_t, 0);
    PUT_VAL(&o->lo, int32_t, np ? pages[0] : 0);
    PUT_VAL(&o->hi, int32_t, np ? pages[np - 1] : 0);
    o->pages.len += np * sizeof(int32_t); /* keep them (span_pages left them past the length) */
    o->n_pages_total += (int64_t)np;
    PUT_VAL(&o->pages_off, int32_t, (int32_t)o->n_pages_total);
    PUT_VAL(&o->n_pages, int32_t, (int32_t)np); /* no page list is stored as [] (the SQL's coalesce) */
    int has_layers = op == OP_LOAD && ((v.have >> K_LAYERS) & 1);
    if (has_layers && v.n_layers && buf_put(&o->layers, o->layers_tmp.p, v.n_layers * sizeof(int64_t)))
        return NOMEM;
    if (has_layers) o->n_layers_total += (int64_t)v.n_layers;
    PUT_VAL(&o->layers_off, int32_t, (int32_t)o->n_layers_total);
    PUT_VAL(&o->layers_valid, uint8_t, (uint8_t)has_layers);
    if ((rc = put_int(&o->tp, &v, op == OP_TRANSFER ? K_DST_RANK : K_TP_RANK, 0))) return rc;
    if ((rc = put_int(&o->page_size, &v, K_PAGE_SIZE, 0))) return rc;
    if ((rc = put_int(&o->bytes, &v, K_BYTES, 1))) return rc;
    if ((rc = put_int(&o->num_tokens, &v, K_NUM_TOKENS, 1))) return rc;
    if (op == OP_TRANSFER) {
        if ((rc = emit_str(&o->instance, &v, K_DST_INSTANCE))) return rc;
    } else if ((rc = strcol_row(&o->instance, (const uint8_t *)"", 0, 0))) {
        return rc; /* NULL here: the span's own instance_id, filled in by the caller */
    }
    if ((rc = emit_str(&o->pool, &v, K_POOL)) || (rc = emit_str(&o->free_mode, &v, K_FREE_MODE)) ||
        (rc = emit_str(&o->free_reason, &v, K_FREE_REASON)) || (rc = emit_str(&o->backend, &v, K_BACKEND)))
        return rc;
    return 0;
}

static int all_rows(Out *o, const int32_t *offsets, Py_ssize_t n_offsets, const uint8_t *data, Py_ssize_t n_data,
                    const int64_t *rows, const int8_t *ops, Py_ssize_t n) {
    PUT_VAL(&o->pages_off, int32_t, 0);
    PUT_VAL(&o->layers_off, int32_t, 0);
    StrCol *strs[] = {&o->instance, &o->pool, &o->free_mode, &o->free_reason, &o->room, &o->backend};
    for (size_t i = 0; i < 6; i++) PUT_VAL(&strs[i]->off, int32_t, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t r = rows[i];
        if (r < 0 || r + 1 >= n_offsets) return DECLINE;
        int32_t a = offsets[r], b = offsets[r + 1];
        if (a < 0 || b < a || b > n_data) return DECLINE;
        int op = ops[i];
        if (op < OP_ALLOC || op > OP_LOAD) return DECLINE;
        int rc = one_row(o, data + a, (size_t)(b - a), op);
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ spec_steps */

/* derive_spec_steps.sql's rows of one request root: a row per element of
 * spec.accepted_per_step when it is a JSON array (none when it is absent or any other value),
 * step_end_ns = start_ns + spec.step_end_offsets_ns[step] (NULL past its end, when it is absent
 * or start_ns is NULL). Declines: a key of ours twice or escaped, accepted elements that are not
 * JSON integers in int32 range, offsets that are not an array of JSON integers, a sum that
 * overflows int64. */
typedef struct {
    Buf declined, root, step, accepted, end, end_valid;
    Buf tmp_acc, tmp_off;
} SpecOut;

static void spec_free(SpecOut *o) {
    Buf *bufs[] = {&o->declined, &o->root, &o->step, &o->accepted, &o->end, &o->end_valid, &o->tmp_acc, &o->tmp_off};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
}

static int spec_parse(SpecOut *o, const uint8_t *p, size_t n, int *has_acc, size_t *n_acc, int *has_off,
                      size_t *n_off) {
    J j = {p, p + n};
    *has_acc = *has_off = 0;
    *n_acc = *n_off = 0;
    o->tmp_acc.len = o->tmp_off.len = 0;
    int seen_acc = 0, seen_off = 0;
    j_ws(&j);
    if (j.p >= j.end || *j.p != '{') return DECLINE;
    j.p++;
    j_ws(&j);
    if (j.p < j.end && *j.p == '}') {
        j.p++;
    } else {
        for (;;) {
            Slice key;
            int esc, rc;
            j_ws(&j);
            if (j_string(&j, &key, &esc) || esc) return DECLINE;
            j_ws(&j);
            if (j.p >= j.end || *j.p++ != ':') return DECLINE;
            j_ws(&j);
            if (key.n == 22 && memcmp(key.p, "spec.accepted_per_step", 22) == 0) {
                if (seen_acc++) return DECLINE;
                if (j.p < j.end && *j.p == '[') {
                    *has_acc = 1;
                    if ((rc = j_int_array(&j, &o->tmp_acc, INT32_MIN, INT32_MAX, 0, n_acc))) return rc;
                } else if (j_skip(&j, 1)) {
                    return DECLINE;
                }
            } else if (key.n == 24 && memcmp(key.p, "spec.step_end_offsets_ns", 24) == 0) {
                if (seen_off++) return DECLINE;
                *has_off = 1;
                if ((rc = j_int_array(&j, &o->tmp_off, INT64_MIN, INT64_MAX, 1, n_off))) return rc;
            } else if (j_skip(&j, 1)) {
                return DECLINE;
            }
            int more;
            if (j_member_end(&j, &more)) return DECLINE;
            if (!more) break;
        }
    }
    j_ws(&j);
    return j.p == j.end ? 0 : DECLINE;
}

static int spec_root(SpecOut *o, int64_t root, const uint8_t *p, size_t n, int64_t start, int start_valid) {
    int has_acc, has_off;
    size_t n_acc, n_off;
    int rc = spec_parse(o, p, n, &has_acc, &n_acc, &has_off, &n_off);
    if (rc == NOMEM) return rc;
    const int32_t *acc = (const int32_t *)(const void *)o->tmp_acc.p;
    const int64_t *off = (const int64_t *)(const void *)o->tmp_off.p;
    if (!rc && has_acc && start_valid) { /* the sums first: one that overflows declines the root */
        for (size_t i = 0; i < n_acc && i < n_off; i++) {
            int64_t sum;
            if (__builtin_add_overflow(start, off[i], &sum)) rc = DECLINE;
        }
    }
    if (rc || !has_acc) {
        PUT_VAL(&o->declined, uint8_t, (uint8_t)(rc != 0));
        return 0;
    }
    PUT_VAL(&o->declined, uint8_t, 0);
    if (n_acc > INT32_MAX) return NOMEM;
    for (size_t i = 0; i < n_acc; i++) {
        int valid = start_valid && i < n_off;
        PUT_VAL(&o->root, int64_t, root);
        PUT_VAL(&o->step, int32_t, (int32_t)i);
        PUT_VAL(&o->accepted, int32_t, acc[i]);
        PUT_VAL(&o->end, int64_t, valid ? start + off[i] : 0);
        PUT_VAL(&o->end_valid, uint8_t, (uint8_t)valid);
    }
    return 0;
}

static int spec_all(SpecOut *o, const int32_t *offsets, Py_ssize_t n_offsets, const uint8_t *data, Py_ssize_t n_data,
                    const int64_t *start, const uint8_t *start_valid, Py_ssize_t n) {
    if (n_offsets < n + 1) return DECLINE;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t a = offsets[i], b = offsets[i + 1];
        if (a < 0 || b < a || b > n_data) return DECLINE;
        int rc = spec_root(o, i, data + a, (size_t)(b - a), start[i], start_valid[i]);
        if (rc) return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------------ Python */

static PyObject *bytes_of(Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", (Py_ssize_t)b->len); }

static PyObject *strcol_tuple(StrCol *c) {
    return Py_BuildValue("(NNN)", bytes_of(&c->off), bytes_of(&c->data), bytes_of(&c->valid));
}

static PyObject *intcol_tuple(IntCol *c) { return Py_BuildValue("(NN)", bytes_of(&c->v), bytes_of(&c->valid)); }

/* The four buffer arguments of kv_rows / spec_rows: 0, or -1 with the exception set. */
static int four_buffers(PyObject *args, Py_buffer b[4]) {
    return PyArg_ParseTuple(args, "y*y*y*y*", &b[0], &b[1], &b[2], &b[3]) ? 0 : -1;
}

static void release(Py_buffer b[4]) {
    for (int i = 0; i < 4; i++) PyBuffer_Release(&b[i]);
}

/* A parse's result: MemoryError, None (declined), or `cols` (a new reference, NULL on error). */
static PyObject *outcome(int rc, PyObject *(*cols)(void *), void *o) {
    if (rc == NOMEM) return PyErr_NoMemory();
    if (rc) return Py_NewRef(Py_None); /* the input is not what the caller said: the SQL decides */
    return cols(o);
}

static PyObject *kv_cols(void *p) {
    Out *o = p;
    return Py_BuildValue(
        "{s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N}",
        "declined", bytes_of(&o->declined), "pages_off", bytes_of(&o->pages_off), "pages", bytes_of(&o->pages),
        "lo", bytes_of(&o->lo), "hi", bytes_of(&o->hi), "n_pages", bytes_of(&o->n_pages),
        "layers_off", bytes_of(&o->layers_off), "layers", bytes_of(&o->layers),
        "layers_valid", bytes_of(&o->layers_valid), "tp_rank", intcol_tuple(&o->tp),
        "page_size", intcol_tuple(&o->page_size), "transfer_bytes", intcol_tuple(&o->bytes),
        "hicache_num_tokens", intcol_tuple(&o->num_tokens), "instance_id", strcol_tuple(&o->instance),
        "kv_pool", strcol_tuple(&o->pool), "free_mode", strcol_tuple(&o->free_mode),
        "free_reason", strcol_tuple(&o->free_reason), "bootstrap_room", strcol_tuple(&o->room),
        "transfer_backend", strcol_tuple(&o->backend));
}

static PyObject *spec_cols(void *p) {
    SpecOut *o = p;
    return Py_BuildValue("{s:N,s:N,s:N,s:N,s:N,s:N}", "declined", bytes_of(&o->declined), "root", bytes_of(&o->root),
                         "step", bytes_of(&o->step), "accepted", bytes_of(&o->accepted), "end", bytes_of(&o->end),
                         "end_valid", bytes_of(&o->end_valid));
}

/* kv_rows / spec_rows: four buffers (offsets, data, then two arrays of one entry a row: int64,
 * and one byte), `run` over them with the GIL released, its columns (`cols`) or None. */
static PyObject *call(PyObject *args, const char *mismatch, int (*run)(void *, const Py_buffer *, Py_ssize_t),
                      PyObject *(*cols)(void *), void (*done)(void *), void *o) {
    Py_buffer b[4];
    if (four_buffers(args, b)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[2].len / (Py_ssize_t)sizeof(int64_t);
    if (b[3].len != n) {
        PyErr_SetString(PyExc_ValueError, mismatch);
    } else {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = run(o, b, n);
        Py_END_ALLOW_THREADS
        result = outcome(rc, cols, o);
        done(o);
    }
    release(b);
    return result;
}

static int kv_run(void *o, const Py_buffer *b, Py_ssize_t n) {
    return all_rows(o, (const int32_t *)b[0].buf, b[0].len / (Py_ssize_t)sizeof(int32_t), (const uint8_t *)b[1].buf,
                    b[1].len, (const int64_t *)b[2].buf, (const int8_t *)b[3].buf, n);
}

static int spec_run(void *o, const Py_buffer *b, Py_ssize_t n) {
    return spec_all(o, (const int32_t *)b[0].buf, b[0].len / (Py_ssize_t)sizeof(int32_t), (const uint8_t *)b[1].buf,
                    b[1].len, (const int64_t *)b[2].buf, (const uint8_t *)b[3].buf, n);
}

static void kv_done(void *o) { out_free(o); }
static void spec_done(void *o) { spec_free(o); }

static PyObject *kv_rows(PyObject *self, PyObject *args) {
    (void)self;
    Out o;
    memset(&o, 0, sizeof o);
    return call(args, "kv_rows: rows (int64) and ops (int8) differ in length", kv_run, kv_cols, kv_done, &o);
}

static PyObject *spec_rows(PyObject *self, PyObject *args) {
    (void)self;
    SpecOut o;
    memset(&o, 0, sizeof o);
    return call(args, "spec_rows: start (int64) and start_valid (uint8) differ in length", spec_run, spec_cols,
                spec_done, &o);
}

static PyMethodDef methods[] = {
    {"spec_rows", spec_rows, METH_VARARGS,
     "spec_rows(offsets, data, start_ns, start_valid) -> dict of spec_steps column buffers (see "
     "ingest/kvfast.py), or None when the input buffers do not hold what they should."},
    {"kv_rows", kv_rows, METH_VARARGS,
     "kv_rows(offsets, data, rows, ops) -> dict of kv_events column buffers (see ingest/kvfast.py), or None "
     "when the input buffers do not hold what they should."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kvfast",
                                    "kv_events rows from kv span attribute JSON (C).", -1, methods};

PyMODINIT_FUNC PyInit__kvfast(void) { return PyModule_Create(&module); }
