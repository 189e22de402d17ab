/* ingest._otlpfast: OTLP protobuf traces -> the staging columns of ingest/decode.py, in C.
 *
 * decode(data) takes a TracesData / ExportTraceServiceRequest message (both are `repeated
 * ResourceSpans resource_spans = 1`) and returns the staging columns as raw buffers (see
 * ingest/protofast.py, which turns them into Arrow arrays), or None when the message holds
 * anything the validating decoder (decode.py, over upb) would treat in a way this file does not
 * reproduce byte for byte: malformed wire data, invalid UTF-8 in a string field, a bad or
 * missing trace or span id (a link's is stored NULL, as decode.py does), a time out of range, a
 * duplicate attribute key, a singular message field given twice, string_value_strindex, an array
 * or kvlist value nested MAX_ATTRIBUTE_DEPTH levels deep (decode.py cuts those), a nested kvlist
 * holding a key of decode.TYPED_KEYS, nesting deeper than MAX_DEPTH. The caller then runs the
 * validating decoder, which quarantines or rejects as it always does. The GIL is released while
 * the message is parsed; no Python object is touched there.
 *
 * Attribute JSON is written exactly as orjson.dumps writes the validating decoder's dict:
 * compact, keys in order, orjson's string escapes, doubles in orjson's shortest form, NaN and
 * infinities as {"doubleValue":"NaN"|"Infinity"|"-Infinity"}, bytes as {"bytesValue":"<base64>"}
 * (decode.py's typed form). Every other field of the OTLP model (trace state, flags, dropped
 * counts, link trace state and flags) has its column; resources and scopes are handed over as
 * message slices (with their schema_url) and finished in Python by decode.py's own code.
 * tests/test_ingest_protofast.py holds both paths to that.
 *
 * decode_json(chunk) fills the same columns from whole OTLP JSON lines (the JSON lines section
 * below; ingest/jsonfast.py, tests/test_ingest_jsonfast.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 32
/* decode.MAX_ATTRIBUTE_DEPTH: an array or kvlist attribute value at this level (a value is at
 * level 0, an array's or kvlist's elements one deeper) declines; decode.py stores it cut. */
#define MAX_ATTRIBUTE_DEPTH 16
#define DECLINE 1
#define NOMEM 2

/* ------------------------------------------------------------------------------ buffers */

#include "_cbuf.h"

static inline int buf_byte(Buf *b, char c) {
    if (b->len + 1 > b->cap && buf_grow(b, 1)) return NOMEM;
    b->p[b->len++] = c;
    return 0;
}

/* A string column: int32 offsets (n + 1), data, one validity byte a row. */
typedef struct {
    Buf off, data, valid;
} StrCol;

static int strcol_init(StrCol *c) { PUT_VAL(&c->off, int32_t, 0); return 0; }

static int strcol_end_row(StrCol *c, int valid) {
    if (c->data.len > INT32_MAX) return DECLINE;
    PUT_VAL(&c->off, int32_t, (int32_t)c->data.len);
    PUT_VAL(&c->valid, uint8_t, (uint8_t)(valid != 0));
    return 0;
}

static void strcol_free(StrCol *c) { buf_free(&c->off); buf_free(&c->data); buf_free(&c->valid); }

/* ------------------------------------------------------------------------------ wire reading */

typedef struct {
    const uint8_t *p, *end;
} Rd;

static inline int rd_varint(Rd *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return DECLINE;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1) return DECLINE;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *out = v; return 0; }
    }
    return DECLINE;
}

static inline int rd_fixed64(Rd *r, uint64_t *out) {
    if (r->end - r->p < 8) return DECLINE;
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | r->p[i];
    r->p += 8;
    *out = v;
    return 0;
}

typedef struct {
    const uint8_t *p;
    size_t n;
} Slice;

/* Next field: number, wire type; for LEN fields the payload slice. Scalars are left to the
 * caller (rd_varint / rd_fixed64) except through skip_field. */
static inline int rd_tag(Rd *r, uint32_t *field, uint32_t *wt) {
    uint64_t tag;
    if (rd_varint(r, &tag)) return DECLINE;
    if (tag >> 32) return DECLINE;
    *field = (uint32_t)(tag >> 3);
    *wt = (uint32_t)(tag & 7);
    if (*field == 0) return DECLINE;
    return 0;
}

static inline int rd_len(Rd *r, Slice *s) {
    uint64_t n;
    if (rd_varint(r, &n)) return DECLINE;
    if (n > (uint64_t)(r->end - r->p)) return DECLINE;
    s->p = r->p;
    s->n = (size_t)n;
    r->p += n;
    return 0;
}

static int skip_field(Rd *r, uint32_t wt) {
    uint64_t v;
    Slice s;
    switch (wt) {
    case 0: return rd_varint(r, &v);
    case 1: if (r->end - r->p < 8) return DECLINE; r->p += 8; return 0;
    case 2: return rd_len(r, &s);
    case 5: if (r->end - r->p < 4) return DECLINE; r->p += 4; return 0;
    default: return DECLINE; /* groups: never in OTLP */
    }
}

/* ------------------------------------------------------------------------------ UTF-8, JSON */

static int utf8_valid(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ULL)) { i += 8; continue; }
        }
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && s[i + 1] < 0xA0) return 0;  /* overlong */
            if (c == 0xED && s[i + 1] >= 0xA0) return 0; /* surrogates */
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n || (s[i + 1] & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && s[i + 1] < 0x90) return 0;
            if (c == 0xF4 && s[i + 1] >= 0x90) return 0;
            i += 4;
        } else {
            return 0;
        }
    }
    return 1;
}

static const char HEXL[] = "0123456789abcdef";

/* A JSON string as orjson writes it: " and \ escaped, \b \t \n \f \r, other controls as \u00xx,
 * everything else (DEL and non-ASCII included) as is. `s` is valid UTF-8. */
static int json_string(Buf *b, const uint8_t *s, size_t n) {
    if (buf_grow(b, n + 2)) return NOMEM;
    b->p[b->len++] = '"';
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (buf_put(b, s + run, i - run)) return NOMEM;
        run = i + 1;
        char esc[6];
        size_t k = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\t': esc[1] = 't'; break;
        case '\n': esc[1] = 'n'; break;
        case '\f': esc[1] = 'f'; break;
        case '\r': esc[1] = 'r'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = HEXL[c >> 4]; esc[5] = HEXL[c & 15];
            k = 6;
        }
        if (buf_put(b, esc, k)) return NOMEM;
    }
    if (buf_put(b, s + run, n - run)) return NOMEM;
    return buf_byte(b, '"');
}

static int json_int(Buf *b, int64_t v) {
    char tmp[24];
    int k = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    return buf_put(b, tmp, (size_t)k);
}

/* A finite double as orjson writes it (shortest digits that read back to the same double;
 * fixed notation for decimal exponents -5..15 with at least one digit after the point,
 * otherwise d[.ddd]e(+|-)X with no exponent padding); NaN and infinities as null. */
/* Digits and decimal exponent of the p-digit decimal string "%.{p-1}e" gives for x. */
static int sci_digits(double x, int p, char *digits, int *exp10) {
    char tmp[48];
    snprintf(tmp, sizeof tmp, "%.*e", p - 1, fabs(x));
    int nd = 0;
    const char *q = tmp;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    *exp10 = atoi(q + 1);
    return nd;
}

static double digits_value(const char *digits, int nd, int exp10) {
    char tmp[48];
    int k = 0;
    tmp[k++] = digits[0];
    tmp[k++] = '.';
    for (int i = 1; i < nd; i++) tmp[k++] = digits[i];
    snprintf(tmp + k, sizeof tmp - (size_t)k, "e%d", exp10);
    return strtod(tmp, NULL);
}

/* The other p-digit neighbour of |x|: one unit in the last place up (dir > 0) or down. */
static void step_digits(char *digits, int nd, int *exp10, int dir) {
    int i = nd - 1;
    if (dir > 0) {
        while (i >= 0 && digits[i] == '9') digits[i--] = '0';
        if (i >= 0) {
            digits[i]++;
        } else {
            digits[0] = '1'; /* 9.99 -> 10.0: 1.00 with the exponent one up */
            for (int j = 1; j < nd; j++) digits[j] = '0';
            (*exp10)++;
        }
    } else {
        while (i >= 0 && digits[i] == '0') digits[i--] = '9';
        digits[i]--;
        if (digits[0] == '0') { /* 1.00 -> 0.99: 9.9..9 with the exponent one down */
            for (int j = 0; j < nd; j++) digits[j] = '9';
            (*exp10)--;
        }
    }
}

/* A finite double as orjson writes it (the shortest digits that read back to the same double,
 * the nearest of them when several; fixed notation for decimal exponents -5..15 with at least
 * one digit after the point, otherwise d[.ddd]e(+|-)X with no exponent padding); NaN and
 * infinities as null. */
static int json_double(Buf *b, double x) {
    if (!isfinite(x)) return buf_put(b, "null", 4);
    char digits[24];
    int nd = 0, e = 0;
    double ax = fabs(x);
    if (ax == 0.0) {
        digits[0] = '0';
        nd = 1;
    } else {
        /* Any decimal of <= 15 significant digits survives a trip through a double, so when the
         * 15-digit rounding reads back to x, the shortest digits are it without trailing zeros;
         * otherwise the answer has 16 or 17 digits (or is the 15-digit other neighbour).
         * Subnormals carry fewer digits: they are searched from one digit up. */
        for (int p = ax < DBL_MIN ? 1 : 15; p <= 17; p++) {
            nd = sci_digits(x, p, digits, &e);
            double v = digits_value(digits, nd, e);
            if (v == ax) break;
            char other[24];
            int e2 = e;
            memcpy(other, digits, (size_t)nd);
            step_digits(other, nd, &e2, v < ax ? 1 : -1);
            if (digits_value(other, nd, e2) == ax) {
                memcpy(digits, other, (size_t)nd);
                e = e2;
                break;
            }
        }
    }
    /* strip trailing zeros of the digits (keep one) */
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    char out[64];
    int k = 0;
    if (signbit(x)) out[k++] = '-';
    if (e >= -5 && e < 16) {
        if (e < 0) {
            out[k++] = '0'; out[k++] = '.';
            for (int i = -1; i > e; i--) out[k++] = '0';
            for (int i = 0; i < nd; i++) out[k++] = digits[i];
        } else {
            for (int i = 0; i <= e; i++) out[k++] = i < nd ? digits[i] : '0';
            out[k++] = '.';
            if (nd > e + 1) {
                for (int i = e + 1; i < nd; i++) out[k++] = digits[i];
            } else {
                out[k++] = '0';
            }
        }
    } else {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            for (int i = 1; i < nd; i++) out[k++] = digits[i];
        }
        k += snprintf(out + k, sizeof out - (size_t)k, "e%c%d", e < 0 ? '-' : '+', e < 0 ? -e : e);
    }
    return buf_put(b, out, (size_t)k);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int json_base64(Buf *b, const uint8_t *s, size_t n) {
    if (buf_grow(b, (n + 2) / 3 * 4 + 2)) return NOMEM;
    char *o = b->p + b->len;
    *o++ = '"';
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        *o++ = B64[v >> 18]; *o++ = B64[(v >> 12) & 63]; *o++ = B64[(v >> 6) & 63]; *o++ = B64[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        *o++ = B64[v >> 18]; *o++ = B64[(v >> 12) & 63]; *o++ = '='; *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8);
        *o++ = B64[v >> 18]; *o++ = B64[(v >> 12) & 63]; *o++ = B64[(v >> 6) & 63]; *o++ = '=';
    }
    *o++ = '"';
    b->len = (size_t)(o - b->p);
    return 0;
}

/* ------------------------------------------------------------------------------ attributes */

/* Key slices of one attribute list, for the duplicate check (a duplicate key declines: the
 * validating decoder's dict keeps the last value at the first key's place). */
typedef struct {
    Slice *k;
    size_t n, cap;
} Keys;

static int keys_add(Keys *ks, Slice key) {
    for (size_t i = 0; i < ks->n; i++)
        if (ks->k[i].n == key.n && memcmp(ks->k[i].p, key.p, key.n) == 0) return DECLINE;
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? ks->cap * 2 : 32;
        Slice *k = realloc(ks->k, cap * sizeof *k);
        if (!k) return NOMEM;
        ks->k = k;
        ks->cap = cap;
    }
    ks->k[ks->n++] = key;
    return 0;
}

/* decode.typed_double: NaN and infinities as {"doubleValue": "NaN" | "Infinity" | "-Infinity"}. */
static int json_nonfinite(Buf *b, double d) {
    if (isnan(d)) return buf_put(b, "{\"doubleValue\":\"NaN\"}", 21);
    if (d > 0) return buf_put(b, "{\"doubleValue\":\"Infinity\"}", 26);
    return buf_put(b, "{\"doubleValue\":\"-Infinity\"}", 27);
}

/* decode.TYPED_KEYS: a kvlist (nested value, level > 0) holding one of these keys declines (the
 * validating decoder wraps a kvlist whose only key is one of them). */
static int typed_key(const uint8_t *k, size_t n) {
    return (n == 10 && memcmp(k, "bytesValue", 10) == 0) || (n == 11 && memcmp(k, "doubleValue", 11) == 0) ||
           (n == 11 && memcmp(k, "kvlistValue", 11) == 0);
}

/* What an attribute value was, for the `rid` column. */
enum { V_NULL, V_STRING, V_INT, V_OTHER };

typedef struct {
    int type;
    Slice str;
    int64_t i;
} Scalar;

static int any_value(Buf *b, Slice msg, int depth, int level, Scalar *sc);

static int kv_list(Buf *b, const Slice *items, size_t n, int depth, int level, Slice want, Scalar *found);

/* KeyValue -> key slice and value slice (missing value: p == NULL). */
static int key_value(Slice kv, Slice *key, Slice *val) {
    Rd r = {kv.p, kv.p + kv.n};
    int have_val = 0;
    key->p = (const uint8_t *)"";
    key->n = 0;
    val->p = NULL;
    val->n = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (wt != 2 || rd_len(&r, key)) return DECLINE;
            if (!utf8_valid(key->p, key->n)) return DECLINE;
        } else if (f == 2) {
            if (wt != 2 || have_val || rd_len(&r, val)) return DECLINE;
            have_val = 1;
        } else if (f == 3) {
            uint64_t v;
            if (wt != 0 || rd_varint(&r, &v)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    return 0;
}

/* Items of a repeated message field 1 (ArrayValue.values, KeyValueList.values). */
static int repeated_one(Slice msg, Slice **items, size_t *n, size_t *cap) {
    Rd r = {msg.p, msg.p + msg.n};
    *n = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            Slice s;
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 16;
                Slice *p = realloc(*items, c * sizeof *p);
                if (!p) return NOMEM;
                *items = p;
                *cap = c;
            }
            (*items)[(*n)++] = s;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    return 0;
}

static int any_value(Buf *b, Slice msg, int depth, int level, Scalar *sc) {
    if (depth > MAX_DEPTH) return DECLINE;
    Rd r = {msg.p, msg.p + msg.n};
    int seen = 0, rc;
    uint32_t f = 0, wt = 0;
    uint64_t v = 0;
    Slice s = {NULL, 0};
    uint32_t kind = 0;
    while (r.p < r.end) {
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f >= 1 && f <= 8) {
            if (seen++) return DECLINE; /* several values: oneof last-wins is not reproduced */
            kind = f;
            if (f == 2 || f == 3 || f == 8) {
                if (wt != 0 || rd_varint(&r, &v)) return DECLINE;
            } else if (f == 4) {
                if (wt != 1 || rd_fixed64(&r, &v)) return DECLINE;
            } else {
                if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            }
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    if (sc) sc->type = V_OTHER;
    switch (kind) {
    case 0:
        if (sc) sc->type = V_NULL;
        return buf_put(b, "null", 4);
    case 1:
        if (!utf8_valid(s.p, s.n)) return DECLINE;
        if (sc) { sc->type = V_STRING; sc->str = s; }
        return json_string(b, s.p, s.n);
    case 2:
        return v ? buf_put(b, "true", 4) : buf_put(b, "false", 5);
    case 3:
        if (sc) { sc->type = V_INT; sc->i = (int64_t)v; }
        return json_int(b, (int64_t)v);
    case 4: {
        double d;
        memcpy(&d, &v, 8);
        return isfinite(d) ? json_double(b, d) : json_nonfinite(b, d);
    }
    case 5: {
        Slice *items = NULL;
        size_t n = 0, cap = 0;
        if (level >= MAX_ATTRIBUTE_DEPTH) return DECLINE;
        rc = repeated_one(s, &items, &n, &cap);
        if (!rc) rc = buf_byte(b, '[');
        for (size_t i = 0; !rc && i < n; i++) {
            if (i) rc = buf_byte(b, ',');
            if (!rc) rc = any_value(b, items[i], depth + 1, level + 1, NULL);
        }
        if (!rc) rc = buf_byte(b, ']');
        free(items);
        return rc;
    }
    case 6: {
        Slice *items = NULL;
        size_t n = 0, cap = 0;
        if (level >= MAX_ATTRIBUTE_DEPTH) return DECLINE;
        rc = repeated_one(s, &items, &n, &cap);
        if (!rc) rc = kv_list(b, items, n, depth + 1, level + 1, (Slice){NULL, 0}, NULL);
        free(items);
        return rc;
    }
    case 7:
        if ((rc = buf_put(b, "{\"bytesValue\":", 14))) return rc;
        if ((rc = json_base64(b, s.p, s.n))) return rc;
        return buf_byte(b, '}');
    default: /* 8: string_value_strindex, invalid in traces */
        return DECLINE;
    }
}

/* KeyValue items -> {"k":v,...}; when want.p is set, the value of that key is reported in
 * *found (type V_NULL when absent). */
static int kv_list(Buf *b, const Slice *items, size_t n, int depth, int level, Slice want, Scalar *found) {
    if (depth > MAX_DEPTH) return DECLINE;
    Keys ks = {NULL, 0, 0};
    int rc = buf_byte(b, '{');
    if (found) found->type = V_NULL;
    for (size_t i = 0; !rc && i < n; i++) {
        Slice key, val;
        rc = key_value(items[i], &key, &val);
        if (!rc && level > 0 && typed_key(key.p, key.n)) rc = DECLINE;
        if (!rc) rc = keys_add(&ks, key);
        if (!rc && i) rc = buf_byte(b, ',');
        if (!rc) rc = json_string(b, key.p, key.n);
        if (!rc) rc = buf_byte(b, ':');
        if (!rc) {
            int is_want = want.p && key.n == want.n && memcmp(key.p, want.p, key.n) == 0;
            if (val.p) {
                rc = any_value(b, val, depth + 1, level, is_want ? found : NULL);
            } else {
                rc = buf_put(b, "null", 4);
                if (is_want) found->type = V_NULL;
            }
        }
    }
    if (!rc) rc = buf_byte(b, '}');
    free(ks.k);
    return rc;
}

/* ------------------------------------------------------------------------------ output */

typedef struct {
    /* spans */
    size_t n;
    Buf trace_id, span_id, parent, parent_valid;
    StrCol name, status_message, attributes, rid, trace_state;
    Buf kind, status_code, start, start_valid, end, end_valid, res_idx, scope_idx;
    Buf flags, dropped_attrs, dropped_events, dropped_links; /* int64 each */
    /* per ResourceSpans: offset and length of its resource message (or JSON object text; -1:
     * none), of its schema_url (JSON: the string's text with quotes; -1: none), and where the
     * ResourceSpans itself starts in the input (to tell which of several files a span came from) */
    Buf resources, rs_off;
    /* per ScopeSpans: offset and length of its scope message (JSON: object text), of its
     * schema_url (-1: none) */
    Buf scopes;
    /* events */
    size_t n_ev;
    Buf ev_span, ev_seq, ev_time, ev_time_valid, ev_dropped;
    StrCol ev_name, ev_attributes;
    /* links */
    size_t n_ln;
    Buf ln_span, ln_seq, ln_trace, ln_trace_valid, ln_span_id, ln_span_valid, ln_flags, ln_dropped;
    StrCol ln_attributes, ln_trace_state;
    /* scratch: slices of the current span's repeated fields */
    Slice *attr, *events, *links, *tmp;
    size_t n_attr, cap_attr, n_events, cap_events, n_links, cap_links, n_tmp, cap_tmp;
    const uint8_t *base;
} Out;

static void out_free(Out *o) {
    Buf *bufs[] = {&o->trace_id, &o->span_id, &o->parent, &o->parent_valid, &o->kind, &o->status_code,
                   &o->start, &o->start_valid, &o->end, &o->end_valid, &o->res_idx, &o->scope_idx,
                   &o->resources, &o->rs_off, &o->scopes, &o->ev_span, &o->ev_seq, &o->ev_time, &o->ev_time_valid,
                   &o->ln_span, &o->ln_seq, &o->ln_trace, &o->ln_span_id, &o->flags, &o->dropped_attrs,
                   &o->dropped_events, &o->dropped_links, &o->ev_dropped, &o->ln_trace_valid,
                   &o->ln_span_valid, &o->ln_flags, &o->ln_dropped};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
    StrCol *cols[] = {&o->name, &o->status_message, &o->attributes, &o->rid, &o->ev_name,
                      &o->ev_attributes, &o->ln_attributes, &o->trace_state, &o->ln_trace_state};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++) strcol_free(cols[i]);
    free(o->attr); free(o->events); free(o->links); free(o->tmp);
}

static int push_slice(Slice **arr, size_t *n, size_t *cap, Slice s) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 32;
        Slice *p = realloc(*arr, c * sizeof *p);
        if (!p) return NOMEM;
        *arr = p;
        *cap = c;
    }
    (*arr)[(*n)++] = s;
    return 0;
}

static void to_hex(uint8_t *out, const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++) { out[2 * i] = (uint8_t)HEXL[s[i] >> 4]; out[2 * i + 1] = (uint8_t)HEXL[s[i] & 15]; }
}

static int all_zero(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i]) return 0;
    return 1;
}

/* normalise_trace_id: 16 bytes, or 8 (SGLang) left-padded; never all zeros -> 32 hex digits. */
static int trace_hex(uint8_t out[32], Slice id) {
    if (id.n != 16 && id.n != 8) return DECLINE;
    if (all_zero(id.p, id.n)) return DECLINE;
    if (id.n == 8) memset(out, '0', 16);
    to_hex(out + 32 - 2 * id.n, id.p, id.n);
    return 0;
}

static int span_hex(uint8_t out[16], Slice id) {
    if (id.n != 8 || all_zero(id.p, 8)) return DECLINE;
    to_hex(out, id.p, 8);
    return 0;
}

/* ------------------------------------------------------------------------------ rows
 * One row of the span, event and link columns, as both parsers (protobuf, JSON) hand them over.
 * The attribute JSON text is written to its column by the parser itself, before. */

typedef struct {
    const uint8_t *trace_hex, *span_hex, *parent_hex; /* 32, 16, 16 hex digits; parent NULL: none */
    Slice name;                                       /* never null ("" when absent) */
    int32_t kind, code;
    int64_t start, end;
    int start_valid, end_valid;
    Slice status_msg;                                 /* "" -> null */
    int rid_valid;
    Slice rid;
    int32_t res_idx, scope_idx;
    Slice trace_state;                                /* "" -> null */
    int64_t flags, dropped_attrs, dropped_events, dropped_links;
} SpanRow;

static int emit_span(Out *o, const SpanRow *r) {
    int rc;
    if (buf_put(&o->trace_id, r->trace_hex, 32) || buf_put(&o->span_id, r->span_hex, 16)) return NOMEM;
    if (buf_put(&o->parent, r->parent_hex ? (const void *)r->parent_hex : "0000000000000000", 16)) return NOMEM;
    PUT_VAL(&o->parent_valid, uint8_t, r->parent_hex != NULL);
    if (r->name.n && buf_put(&o->name.data, r->name.p, r->name.n)) return NOMEM;
    if ((rc = strcol_end_row(&o->name, 1))) return rc;
    PUT_VAL(&o->kind, int32_t, r->kind);
    PUT_VAL(&o->status_code, int32_t, r->code);
    PUT_VAL(&o->start, int64_t, r->start);
    PUT_VAL(&o->start_valid, uint8_t, r->start_valid != 0);
    PUT_VAL(&o->end, int64_t, r->end);
    PUT_VAL(&o->end_valid, uint8_t, r->end_valid != 0);
    if (r->status_msg.n && buf_put(&o->status_message.data, r->status_msg.p, r->status_msg.n)) return NOMEM;
    if ((rc = strcol_end_row(&o->status_message, r->status_msg.n != 0))) return rc;
    if (r->rid_valid && r->rid.n && buf_put(&o->rid.data, r->rid.p, r->rid.n)) return NOMEM;
    if ((rc = strcol_end_row(&o->rid, r->rid_valid))) return rc;
    PUT_VAL(&o->res_idx, int32_t, r->res_idx);
    PUT_VAL(&o->scope_idx, int32_t, r->scope_idx);
    if (r->trace_state.n && buf_put(&o->trace_state.data, r->trace_state.p, r->trace_state.n)) return NOMEM;
    if ((rc = strcol_end_row(&o->trace_state, r->trace_state.n != 0))) return rc;
    PUT_VAL(&o->flags, int64_t, r->flags);
    PUT_VAL(&o->dropped_attrs, int64_t, r->dropped_attrs);
    PUT_VAL(&o->dropped_events, int64_t, r->dropped_events);
    PUT_VAL(&o->dropped_links, int64_t, r->dropped_links);
    o->n++;
    return 0;
}

static int emit_event(Out *o, int64_t span_seq, int32_t seq, int64_t t, int t_valid, Slice name, int name_valid,
                      int64_t dropped) {
    PUT_VAL(&o->ev_dropped, int64_t, dropped);
    PUT_VAL(&o->ev_span, int64_t, span_seq);
    PUT_VAL(&o->ev_seq, int32_t, seq);
    PUT_VAL(&o->ev_time, int64_t, t);
    PUT_VAL(&o->ev_time_valid, uint8_t, t_valid != 0);
    if (name.n && buf_put(&o->ev_name.data, name.p, name.n)) return NOMEM;
    int rc = strcol_end_row(&o->ev_name, name_valid);
    if (!rc) o->n_ev++;
    return rc;
}

/* One link row; a NULL trace or sid is a link without that id (stored NULL). */
static int emit_link(Out *o, int64_t span_seq, int32_t seq, const uint8_t *trace, const uint8_t *sid,
                     Slice trace_state, int64_t flags, int64_t dropped) {
    static const char zeros[33] = "00000000000000000000000000000000";
    int rc;
    PUT_VAL(&o->ln_span, int64_t, span_seq);
    PUT_VAL(&o->ln_seq, int32_t, seq);
    if (buf_put(&o->ln_trace, trace ? (const void *)trace : zeros, 32)) return NOMEM;
    if (buf_put(&o->ln_span_id, sid ? (const void *)sid : zeros, 16)) return NOMEM;
    PUT_VAL(&o->ln_trace_valid, uint8_t, trace != NULL);
    PUT_VAL(&o->ln_span_valid, uint8_t, sid != NULL);
    if (trace_state.n && buf_put(&o->ln_trace_state.data, trace_state.p, trace_state.n)) return NOMEM;
    if ((rc = strcol_end_row(&o->ln_trace_state, trace_state.n != 0))) return rc;
    PUT_VAL(&o->ln_flags, int64_t, flags);
    PUT_VAL(&o->ln_dropped, int64_t, dropped);
    o->n_ln++;
    return 0;
}

static int string_field(Rd *r, uint32_t wt, Slice *s) {
    if (wt != 2 || rd_len(r, s)) return DECLINE;
    return utf8_valid(s->p, s->n) ? 0 : DECLINE;
}

static int check_varint(Rd *r, uint32_t wt) {
    uint64_t v;
    return (wt != 0 || rd_varint(r, &v)) ? DECLINE : 0;
}

/* A uint32 varint field (upb keeps the low 32 bits of a longer varint). */
static int uint32_field(Rd *r, uint32_t wt, int64_t *out) {
    uint64_t v;
    if (wt != 0 || rd_varint(r, &v)) return DECLINE;
    *out = (int64_t)(uint32_t)v;
    return 0;
}

static int fixed32_field(Rd *r, uint32_t wt, int64_t *out) {
    if (wt != 5 || r->end - r->p < 4) return DECLINE;
    *out = (int64_t)((uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 | (uint32_t)r->p[3] << 24);
    r->p += 4;
    return 0;
}

static int attributes_json(Out *o, StrCol *col, const Slice *items, size_t n, Scalar *rid) {
    static const uint8_t rid_key[] = "rid";
    int rc = kv_list(&col->data, items, n, 0, 0, rid ? (Slice){rid_key, 3} : (Slice){NULL, 0}, rid);
    (void)o;
    return rc ? rc : strcol_end_row(col, 1);
}

static int span_event(Out *o, Slice msg, int64_t span_seq, int32_t seq) {
    Rd r = {msg.p, msg.p + msg.n};
    uint64_t t = 0;
    int64_t dropped = 0;
    Slice name = {NULL, 0};
    int rc;
    o->n_tmp = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (wt != 1 || rd_fixed64(&r, &t)) return DECLINE;
        } else if (f == 2) {
            if (string_field(&r, wt, &name)) return DECLINE;
        } else if (f == 3) {
            Slice s;
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = push_slice(&o->tmp, &o->n_tmp, &o->cap_tmp, s))) return rc;
        } else if (f == 4) {
            if (uint32_field(&r, wt, &dropped)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    if (t > INT64_MAX) return DECLINE;
    if ((rc = attributes_json(o, &o->ev_attributes, o->tmp, o->n_tmp, NULL))) return rc;
    return emit_event(o, span_seq, seq, (int64_t)t, t != 0, name, name.n != 0, dropped);
}

static int span_link(Out *o, Slice msg, int64_t span_seq, int32_t seq) {
    Rd r = {msg.p, msg.p + msg.n};
    Slice trace = {NULL, 0}, span = {NULL, 0}, state = {NULL, 0}, s;
    int64_t flags = 0, dropped = 0;
    int rc;
    o->n_tmp = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (wt != 2 || rd_len(&r, &trace)) return DECLINE;
        } else if (f == 2) {
            if (wt != 2 || rd_len(&r, &span)) return DECLINE;
        } else if (f == 3) {
            if (string_field(&r, wt, &state)) return DECLINE;
        } else if (f == 4) {
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = push_slice(&o->tmp, &o->n_tmp, &o->cap_tmp, s))) return rc;
        } else if (f == 5) {
            if (uint32_field(&r, wt, &dropped)) return DECLINE;
        } else if (f == 6) {
            if (fixed32_field(&r, wt, &flags)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    /* decode._link_ids: an id that is absent, all zeros or of the wrong length is NULL */
    uint8_t trace_x[32], span_x[16];
    int have_trace = trace_hex(trace_x, trace) == 0, have_span = span_hex(span_x, span) == 0;
    if ((rc = attributes_json(o, &o->ln_attributes, o->tmp, o->n_tmp, NULL))) return rc;
    return emit_link(o, span_seq, seq, have_trace ? trace_x : NULL, have_span ? span_x : NULL, state, flags, dropped);
}

static int enum_i32(uint64_t v, int32_t *out) {
    *out = (int32_t)(uint32_t)v; /* int32 / enum fields keep the low 32 bits; any value is kept */
    return 0;
}

static int status_parse(Slice msg, int32_t *code, Slice *message) {
    Rd r = {msg.p, msg.p + msg.n};
    while (r.p < r.end) {
        uint32_t f, wt;
        uint64_t v;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 2) {
            if (string_field(&r, wt, message)) return DECLINE;
        } else if (f == 3) {
            if (wt != 0 || rd_varint(&r, &v) || enum_i32(v, code)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    return 0;
}

static int one_span(Out *o, Slice msg, int32_t res_idx, int32_t scope_idx) {
    Rd r = {msg.p, msg.p + msg.n};
    Slice trace = {NULL, 0}, sid = {NULL, 0}, parent = {NULL, 0}, name = {NULL, 0}, s;
    Slice st_msg = {NULL, 0}, state = {NULL, 0};
    uint64_t start = 0, end = 0, v;
    int32_t kind = 0, code = 0;
    int64_t flags = 0, d_attrs = 0, d_events = 0, d_links = 0;
    int have_status = 0, rc;
    o->n_attr = o->n_events = o->n_links = 0;
    while (r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        switch (f) {
        case 1: if (wt != 2 || rd_len(&r, &trace)) return DECLINE; break;
        case 2: if (wt != 2 || rd_len(&r, &sid)) return DECLINE; break;
        case 3: if (string_field(&r, wt, &state)) return DECLINE; break;
        case 4: if (wt != 2 || rd_len(&r, &parent)) return DECLINE; break;
        case 5: if (string_field(&r, wt, &name)) return DECLINE; break;
        case 6: if (wt != 0 || rd_varint(&r, &v) || enum_i32(v, &kind)) return DECLINE; break;
        case 7: if (wt != 1 || rd_fixed64(&r, &start)) return DECLINE; break;
        case 8: if (wt != 1 || rd_fixed64(&r, &end)) return DECLINE; break;
        case 9:
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = push_slice(&o->attr, &o->n_attr, &o->cap_attr, s))) return rc;
            break;
        case 11:
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = push_slice(&o->events, &o->n_events, &o->cap_events, s))) return rc;
            break;
        case 13:
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = push_slice(&o->links, &o->n_links, &o->cap_links, s))) return rc;
            break;
        case 10: if (uint32_field(&r, wt, &d_attrs)) return DECLINE; break;
        case 12: if (uint32_field(&r, wt, &d_events)) return DECLINE; break;
        case 14: if (uint32_field(&r, wt, &d_links)) return DECLINE; break;
        case 15:
            if (wt != 2 || have_status || rd_len(&r, &s)) return DECLINE;
            have_status = 1;
            if (status_parse(s, &code, &st_msg)) return DECLINE;
            break;
        case 16: if (fixed32_field(&r, wt, &flags)) return DECLINE; break;
        default: if (skip_field(&r, wt)) return DECLINE;
        }
    }
    if (start > INT64_MAX || end > INT64_MAX) return DECLINE;
    uint8_t trace_x[32], span_x[16], parent_x[16];
    if ((rc = trace_hex(trace_x, trace)) || (rc = span_hex(span_x, sid))) return rc;
    if (parent.n == 8 && all_zero(parent.p, 8)) parent.n = 0; /* all zeros: no parent (a root) */
    if (parent.n && (rc = span_hex(parent_x, parent))) return rc;
    Scalar rid;
    if ((rc = attributes_json(o, &o->attributes, o->attr, o->n_attr, &rid))) return rc;
    char rid_int[24];
    SpanRow row = {trace_x, span_x, parent.n ? parent_x : NULL, name, kind, code, (int64_t)start, (int64_t)end,
                   start != 0, end != 0, st_msg, rid.type != V_NULL, {NULL, 0}, res_idx, scope_idx,
                   state, flags, d_attrs, d_events, d_links};
    if (rid.type == V_STRING) {
        row.rid = rid.str;
    } else if (rid.type == V_INT) {
        int k = snprintf(rid_int, sizeof rid_int, "%lld", (long long)rid.i);
        row.rid = (Slice){(const uint8_t *)rid_int, (size_t)k};
    } else if (rid.type != V_NULL) {
        return DECLINE; /* str() of a bool, double or list: left to the validating decoder */
    }
    int64_t seq = (int64_t)o->n;
    if ((rc = emit_span(o, &row))) return rc;
    /* events and links after the span's own row (they reuse o->tmp) */
    size_t n_events = o->n_events, n_links = o->n_links;
    for (size_t i = 0; i < n_events; i++)
        if ((rc = span_event(o, o->events[i], seq, (int32_t)i))) return rc;
    for (size_t i = 0; i < n_links; i++)
        if ((rc = span_link(o, o->links[i], seq, (int32_t)i))) return rc;
    return 0;
}

/* InstrumentationScope: name and version; attributes are parsed (validated) and dropped. */
static int scope_msg_parse(Out *o, Slice msg, Slice *name, Slice *version) {
    Rd r = {msg.p, msg.p + msg.n};
    Buf scratch = {NULL, 0, 0};
    int rc = 0;
    o->n_tmp = 0;
    while (!rc && r.p < r.end) {
        uint32_t f, wt;
        Slice s;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (string_field(&r, wt, name)) return DECLINE;
        } else if (f == 2) {
            if (string_field(&r, wt, version)) return DECLINE;
        } else if (f == 3) {
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            rc = push_slice(&o->tmp, &o->n_tmp, &o->cap_tmp, s);
        } else if (f == 4) {
            if (check_varint(&r, wt)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    /* scope attributes may repeat keys (they are not stored): validate each value alone */
    for (size_t i = 0; !rc && i < o->n_tmp; i++) {
        Slice key, val;
        rc = key_value(o->tmp[i], &key, &val);
        scratch.len = 0;
        if (!rc && val.p) rc = any_value(&scratch, val, 1, 0, NULL);
    }
    buf_free(&scratch);
    return rc;
}

/* ResourceSpans and ScopeSpans have one shape: a singular message (resource / scope, field 1,
 * given at most once), a repeated message (scope_spans / spans, field 2) and schema_url (3). */
static int one_and_many(Slice msg, Slice *first, int *have_first, Slice **items, size_t *n, size_t *cap, Slice *url) {
    Rd r = {msg.p, msg.p + msg.n};
    Slice s;
    int rc = 0;
    while (!rc && r.p < r.end) {
        uint32_t f, wt;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (wt != 2 || *have_first || rd_len(&r, first)) return DECLINE;
            *have_first = 1;
        } else if (f == 2) {
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            rc = push_slice(items, n, cap, s);
        } else if (f == 3) {
            if (string_field(&r, wt, url)) return DECLINE;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    return rc;
}

static int scope_spans(Out *o, Slice msg, int32_t res_idx) {
    Slice scope_msg = {NULL, 0}, name = {NULL, 0}, version = {NULL, 0}, url = {NULL, 0};
    int have_scope = 0;
    /* spans are parsed after the scope is known; collect their slices first */
    Slice *spans = NULL;
    size_t n = 0, cap = 0;
    int rc = one_and_many(msg, &scope_msg, &have_scope, &spans, &n, &cap, &url);
    if (!rc && have_scope) rc = scope_msg_parse(o, scope_msg, &name, &version);
    if (!rc) {
        int64_t rec[4] = {have_scope ? scope_msg.p - o->base : -1, have_scope ? (int64_t)scope_msg.n : -1,
                          url.n ? url.p - o->base : -1, url.n ? (int64_t)url.n : -1};
        rc = buf_put(&o->scopes, rec, sizeof rec);
    }
    int32_t scope_idx = (int32_t)(o->scopes.len / (4 * sizeof(int64_t))) - 1;
    for (size_t i = 0; !rc && i < n; i++) rc = one_span(o, spans[i], res_idx, scope_idx);
    free(spans);
    return rc;
}

static int resource_spans(Out *o, Slice msg) {
    Slice res = {NULL, 0}, url = {NULL, 0};
    int have_res = 0;
    Slice *scopes = NULL;
    size_t n = 0, cap = 0;
    int rc = one_and_many(msg, &res, &have_res, &scopes, &n, &cap, &url);
    if (!rc) {
        int64_t rec[4] = {have_res ? res.p - o->base : -1, have_res ? (int64_t)res.n : -1,
                          url.n ? url.p - o->base : -1, url.n ? (int64_t)url.n : -1};
        int64_t at = msg.p - o->base;
        rc = buf_put(&o->resources, rec, sizeof rec);
        if (!rc) rc = buf_put(&o->rs_off, &at, sizeof at);
    }
    int32_t res_idx = (int32_t)(o->resources.len / (4 * sizeof(int64_t))) - 1;
    for (size_t i = 0; !rc && i < n; i++) rc = scope_spans(o, scopes[i], res_idx);
    free(scopes);
    return rc;
}

static int traces(Out *o, const uint8_t *p, size_t n) {
    Rd r = {p, p + n};
    int rc;
    o->base = p;
    StrCol *cols[] = {&o->name, &o->status_message, &o->attributes, &o->rid, &o->ev_name,
                      &o->ev_attributes, &o->ln_attributes, &o->trace_state, &o->ln_trace_state};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
        if ((rc = strcol_init(cols[i]))) return rc;
    while (r.p < r.end) {
        uint32_t f, wt;
        Slice s;
        if (rd_tag(&r, &f, &wt)) return DECLINE;
        if (f == 1) {
            if (wt != 2 || rd_len(&r, &s)) return DECLINE;
            if ((rc = resource_spans(o, s))) return rc;
        } else if (skip_field(&r, wt)) {
            return DECLINE;
        }
    }
    return 0;
}

/* ============================================================================== JSON lines
 *
 * decode_json(chunk) takes whole OTLP JSON lines (one TracesData / ExportTraceServiceRequest
 * object a line, as the Collector's file exporter writes them) and fills the same columns as
 * decode(). It declines (None) whatever the validating decoder (orjson + decode.add_json_traces)
 * would read differently or quarantine, or what this parser does not reproduce byte for byte:
 * invalid JSON or UTF-8, a BOM, JSON null anywhere, NaN/Infinity, a lone surrogate, a line that
 * is not one object, a key the validating decoder reads written with an escape or in snake_case
 * (any unknown key holding '_'), instrumentationLibrary(Spans), a duplicate member the validating
 * decoder reads, a duplicate attribute key, an AnyValue with several values or an unknown member,
 * numeric or non-decimal nanoseconds, a numeric or non-canonical-text intValue, a string
 * doubleValue (NaN, Infinity), a bytesValue that is not canonical base64, a nested kvlist holding
 * a key of decode.TYPED_KEYS, ids that are not 16/32 hex digits or are all zeros (an all-zero
 * parentSpanId is a root), flags or dropped counts that are not uint32 numbers, times and kinds
 * out of range, a `rid` that is not a string or an integer, nesting deeper than J_MAX_DEPTH.
 * Unknown camelCase members are validated as JSON and skipped. Resources and scopes (with their
 * schemaUrl) are reported as raw JSON text slices and finished in Python by the validating
 * decoder's own code (ingest/jsonfast.py). */

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define J_MAX_DEPTH 48

typedef struct {
    const uint8_t *p, *end;
    Out *o;
    Buf tmp, tmp2, span_name, status_msg, ev_name, rid, trace_state, ln_state;
    int rid_type;
} J;

/* A written attribute value: its type (for `rid`) and where its JSON text sits in the buffer. */
typedef struct {
    int type;
    size_t voff, vlen;
} JScalar;

typedef struct {
    size_t off, len;
    uint32_t hash;
} KOff;

#define KEY_IS(k, lit) ((k).n == sizeof(lit) - 1 && memcmp((k).p, (lit), sizeof(lit) - 1) == 0)

static inline void j_ws(J *j) {
    while (j->p < j->end) {
        uint8_t c = *j->p;
        if (c != ' ' && c != '\t' && c != '\r' && c != '\n') break;
        j->p++;
    }
}

static inline int j_eat(J *j, uint8_t c) {
    j_ws(j);
    if (j->p < j->end && *j->p == c) {
        j->p++;
        return 0;
    }
    return DECLINE;
}

/* At a string (after whitespace): its raw inner bytes, and whether they hold a backslash (then
 * they still need j_unescape, which also validates the escapes). Raw control bytes decline. The
 * chunk is valid UTF-8 (checked up front). */
static inline int j_string(J *j, Slice *s, int *esc) {
    const uint8_t *p = j->p, *end = j->end;
    if (p >= end || *p != '"') return DECLINE;
    const uint8_t *start = ++p;
    int e = 0;
    for (;;) {
#ifdef __SSE2__
        const __m128i q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\'), c1f = _mm_set1_epi8(0x1f);
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
            __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, q), _mm_cmpeq_epi8(x, bs)),
                                     _mm_cmpeq_epi8(_mm_max_epu8(x, c1f), c1f));
            unsigned mask = (unsigned)_mm_movemask_epi8(m);
            if (mask) {
                p += __builtin_ctz(mask);
                break;
            }
            p += 16;
        }
#endif
        while (p < end && *p != '"' && *p != '\\' && *p >= 0x20) p++;
        if (p >= end) return DECLINE;
        if (*p == '"') break;
        if (*p < 0x20) return DECLINE;
        e = 1; /* a backslash and the byte it escapes */
        if (end - p < 2) return DECLINE;
        p += 2;
    }
    s->p = start;
    s->n = (size_t)(p - start);
    *esc = e;
    j->p = p + 1;
    return 0;
}

static int hex4(const uint8_t *s, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t c = s[i], l = (uint8_t)(c | 0x20);
        uint32_t d;
        if (c >= '0' && c <= '9') d = (uint32_t)(c - '0');
        else if (l >= 'a' && l <= 'f') d = (uint32_t)(l - 'a' + 10);
        else return DECLINE;
        x = x << 4 | d;
    }
    *v = x;
    return 0;
}

/* The text of a JSON string's raw inner bytes (escapes resolved; surrogate pairs joined, lone
 * surrogates decline as orjson rejects them). Never longer than the raw bytes. */
static int j_unescape(const uint8_t *s, size_t n, Buf *out) {
    out->len = 0;
    if (buf_grow(out, n + 1)) return NOMEM;
    uint8_t *o = (uint8_t *)out->p;
    size_t k = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c != '\\') {
            o[k++] = c;
            i++;
            continue;
        }
        if (n - i < 2) return DECLINE;
        c = s[i + 1];
        i += 2;
        switch (c) {
        case '"': case '\\': case '/': o[k++] = c; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'u': {
            uint32_t cp, lo;
            if (n - i < 4 || hex4(s + i, &cp)) return DECLINE;
            i += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return DECLINE;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (n - i < 6 || s[i] != '\\' || s[i + 1] != 'u' || hex4(s + i + 2, &lo)) return DECLINE;
                if (lo < 0xDC00 || lo > 0xDFFF) return DECLINE;
                i += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (cp < 0x80) {
                o[k++] = (uint8_t)cp;
            } else if (cp < 0x800) {
                o[k++] = (uint8_t)(0xC0 | cp >> 6);
                o[k++] = (uint8_t)(0x80 | (cp & 63));
            } else if (cp < 0x10000) {
                o[k++] = (uint8_t)(0xE0 | cp >> 12);
                o[k++] = (uint8_t)(0x80 | ((cp >> 6) & 63));
                o[k++] = (uint8_t)(0x80 | (cp & 63));
            } else {
                o[k++] = (uint8_t)(0xF0 | cp >> 18);
                o[k++] = (uint8_t)(0x80 | ((cp >> 12) & 63));
                o[k++] = (uint8_t)(0x80 | ((cp >> 6) & 63));
                o[k++] = (uint8_t)(0x80 | (cp & 63));
            }
            break;
        }
        default: return DECLINE;
        }
    }
    out->len = k;
    return 0;
}

/* A string's JSON text as orjson writes its value: the raw text when it has no escapes (it then
 * holds no quote, backslash or control byte, so orjson writes it as is), else re-escaped. */
static int j_emit_string(J *j, Buf *b, Slice s, int esc) {
    int rc;
    if (!esc) {
        if (buf_grow(b, s.n + 2)) return NOMEM;
        b->p[b->len++] = '"';
        memcpy(b->p + b->len, s.p, s.n);
        b->len += s.n;
        b->p[b->len++] = '"';
        return 0;
    }
    if ((rc = j_unescape(s.p, s.n, &j->tmp))) return rc;
    return json_string(b, (const uint8_t *)j->tmp.p, j->tmp.len);
}

/* A string's text as a slice: the raw bytes, or (with escapes) decoded into `into`. */
static int j_text(J *j, Buf *into, Slice *out) {
    Slice s;
    int esc, rc;
    if ((rc = j_string(j, &s, &esc))) return rc;
    if (!esc) {
        *out = s;
        return 0;
    }
    if ((rc = j_unescape(s.p, s.n, into))) return rc;
    out->p = (const uint8_t *)into->p;
    out->n = into->len;
    return 0;
}

typedef struct {
    const uint8_t *p;
    size_t n;
    int is_int, nonzero;
} Num;

/* A number token by the JSON grammar (the byte after it is checked by the caller's grammar). */
static int j_number(J *j, Num *num) {
    const uint8_t *p = j->p, *end = j->end, *start = p;
    int is_int = 1, nz = 0;
    if (p < end && *p == '-') p++;
    if (p >= end) return DECLINE;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        nz = 1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return DECLINE;
    }
    if (p < end && *p == '.') {
        is_int = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return DECLINE;
        while (p < end && *p >= '0' && *p <= '9') nz |= *p++ != '0';
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return DECLINE;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    num->p = start;
    num->n = (size_t)(p - start);
    num->is_int = is_int;
    num->nonzero = nz;
    j->p = p;
    return 0;
}

static int num_strtod(const Num *num, double *out) {
    char tmp[128];
    if (num->n >= sizeof tmp) return DECLINE;
    memcpy(tmp, num->p, num->n);
    tmp[num->n] = 0;
    *out = strtod(tmp, NULL);
    return isfinite(*out) ? 0 : DECLINE; /* orjson rejects a number that is infinite as a double */
}

static int j_literal(J *j, const char *lit, size_t n) {
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return DECLINE;
    j->p += n;
    return 0;
}

/* Validate and skip any JSON value (null declines). */
static int j_skip(J *j, int depth) {
    int rc;
    Slice s;
    int esc;
    if (depth > J_MAX_DEPTH) return DECLINE;
    j_ws(j);
    if (j->p >= j->end) return DECLINE;
    switch (*j->p) {
    case '{':
        j->p++;
        j_ws(j);
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            return 0;
        }
        for (;;) {
            j_ws(j);
            if ((rc = j_string(j, &s, &esc))) return rc;
            if (esc && (rc = j_unescape(s.p, s.n, &j->tmp))) return rc;
            if ((rc = j_eat(j, ':')) || (rc = j_skip(j, depth + 1))) return rc;
            j_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            return j_eat(j, '}');
        }
    case '[':
        j->p++;
        j_ws(j);
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return 0;
        }
        for (;;) {
            if ((rc = j_skip(j, depth + 1))) return rc;
            j_ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            return j_eat(j, ']');
        }
    case '"':
        if ((rc = j_string(j, &s, &esc))) return rc;
        return esc ? j_unescape(s.p, s.n, &j->tmp) : 0;
    case 't': return j_literal(j, "true", 4);
    case 'f': return j_literal(j, "false", 5);
    default: {
        Num num;
        double x;
        if ((rc = j_number(j, &num))) return rc;
        if (!num.is_int || num.n > 15) return num_strtod(&num, &x);
        return 0;
    }
    }
}

/* Structural objects and arrays: open, key (no escapes), next. */
static int j_open(J *j, uint8_t open, uint8_t close, int *more) {
    if (j_eat(j, open)) return DECLINE;
    j_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        *more = 0;
    } else {
        *more = 1;
    }
    return 0;
}

static int j_next(J *j, uint8_t close, int *more) {
    j_ws(j);
    if (j->p >= j->end) return DECLINE;
    if (*j->p == ',') {
        j->p++;
        *more = 1;
        return 0;
    }
    if (*j->p == close) {
        j->p++;
        *more = 0;
        return 0;
    }
    return DECLINE;
}

static int j_key(J *j, Slice *k) {
    int esc;
    j_ws(j);
    if (j_string(j, k, &esc) || esc) return DECLINE; /* an escaped key may spell a field we read */
    if (j_eat(j, ':')) return DECLINE;
    j_ws(j);
    return 0;
}

/* A member the validating decoder never reads: validated and skipped. A key with '_' declines:
 * the validating decoder reads snake_case aliases of the camelCase fields. */
static int j_unknown(J *j, Slice k, int depth) {
    if (memchr(k.p, '_', k.n)) return DECLINE;
    return j_skip(j, depth);
}

#define SEEN(bit)                         \
    do {                                  \
        if (seen & (bit)) return DECLINE; \
        seen |= (bit);                    \
    } while (0)

/* ------------------------------------------------------------------- attribute values */

static int j_attr_list(J *j, Buf *b, int depth, int level, int want_rid);

/* intValue: a decimal string in int64 range, written as Python's str(int(text)). */
static int j_int_value(J *j, Buf *b) {
    Slice s;
    int esc;
    if (j_string(j, &s, &esc) || esc || s.n == 0 || s.n > 64) return DECLINE;
    size_t i = 0;
    int neg = s.p[0] == '-';
    if (neg && s.n == 1) return DECLINE;
    i = (size_t)neg;
    uint64_t v = 0;
    for (; i < s.n; i++) {
        unsigned d = (unsigned)(s.p[i] - '0');
        if (d > 9) return DECLINE;
        if (v > (UINT64_MAX - d) / 10) return DECLINE;
        v = v * 10 + d;
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX) return DECLINE;
    size_t d0 = (size_t)neg;
    if (!(s.p[d0] == '0' && (s.n - d0 > 1 || neg))) return buf_put(b, s.p, s.n); /* canonical */
    int64_t x = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return json_int(b, x);
}

/* Whether a number token is already orjson's text of its double: -I.F with no exponent, no
 * trailing zero in F (but "x.0"), at most 15 significant digits (so it is the shortest, unique
 * decimal of the double) and a decimal exponent in -5..15 (orjson's fixed notation). */
static int plain_canonical(const uint8_t *s, size_t n) {
    size_t i = s[0] == '-';
    const uint8_t *dot = memchr(s + i, '.', n - i);
    if (!dot) return 0;
    const uint8_t *I = s + i, *F = dot + 1;
    size_t il = (size_t)(dot - I), fl = n - i - il - 1, sig;
    for (size_t k = 0; k < fl; k++)
        if (F[k] < '0' || F[k] > '9') return 0; /* an exponent */
    int integral = fl == 1 && F[0] == '0';
    if (!integral && F[fl - 1] == '0') return 0;
    if (I[0] == '0') {
        if (integral) return 1; /* 0.0, -0.0 */
        size_t lz = 0;
        while (lz < fl && F[lz] == '0') lz++;
        if (lz > 4) return 0;
        sig = fl - lz;
    } else {
        if (il > 16) return 0;
        sig = il + (integral ? 0 : fl);
    }
    return sig <= 15;
}

/* doubleValue: a JSON number (float(x) of what orjson parsed), written as orjson writes it. */
static int j_double_value(J *j, Buf *b) {
    Num num;
    double x;
    if (j->p >= j->end || *j->p == '"') return DECLINE;
    if (j_number(j, &num) || num_strtod(&num, &x)) return DECLINE;
    if (num.is_int) {
        if (num.n - (num.p[0] == '-') > 19) return DECLINE; /* within 64 bits: orjson parses an int */
        if (x == 0.0) x = 0.0; /* float(-0) is 0.0 */
        return json_double(b, x);
    }
    if (x == 0.0 && num.nonzero) return DECLINE; /* underflow */
    if (plain_canonical(num.p, num.n)) return buf_put(b, num.p, num.n);
    return json_double(b, x);
}

static int j_any(J *j, Buf *b, int depth, int level, JScalar *sc);

static int b64_index(uint8_t c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Whether s is standard, padded base64 that base64.b64encode would write for its bytes (no
 * stray bits in the last character before the padding). */
static int canonical_base64(const uint8_t *s, size_t n) {
    if (n % 4) return 0;
    size_t pad = 0;
    if (n && s[n - 1] == '=') pad = (n >= 2 && s[n - 2] == '=') ? 2 : 1;
    for (size_t i = 0; i < n - pad; i++)
        if (b64_index(s[i]) < 0) return 0;
    if (pad == 1 && (b64_index(s[n - 2]) & 3)) return 0;
    if (pad == 2 && (b64_index(s[n - 3]) & 15)) return 0;
    return 1;
}

/* arrayValue / kvlistValue: {"values": [...]} (other members ignored, as x.get does); its
 * elements are at nesting `level`. */
static int j_values(J *j, Buf *b, int depth, int level, int kvlist) {
    int rc, more, have = 0;
    if (depth > J_MAX_DEPTH) return DECLINE;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "values")) {
            if (have) return DECLINE;
            have = 1;
            if (kvlist) {
                if ((rc = j_attr_list(j, b, depth + 1, level, 0))) return rc;
            } else {
                int amore;
                size_t i = 0;
                if ((rc = j_open(j, '[', ']', &amore)) || (rc = buf_byte(b, '['))) return rc;
                while (amore) {
                    JScalar sc;
                    if (i++ && (rc = buf_byte(b, ','))) return rc;
                    if ((rc = j_any(j, b, depth + 1, level, &sc)) || (rc = j_next(j, ']', &amore))) return rc;
                }
                if ((rc = buf_byte(b, ']'))) return rc;
            }
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    return have ? 0 : buf_put(b, kvlist ? "{}" : "[]", 2);
}

/* One AnyValue object -> its JSON text (decode.json_any_value, then orjson). */
static int j_any(J *j, Buf *b, int depth, int level, JScalar *sc) {
    int rc, more;
    Slice k, s;
    int esc;
    if (depth > J_MAX_DEPTH) return DECLINE;
    sc->type = V_OTHER;
    sc->voff = b->len;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    if (!more) {
        sc->type = V_NULL;
        sc->vlen = 4;
        return buf_put(b, "null", 4);
    }
    if ((rc = j_key(j, &k))) return rc;
    if (KEY_IS(k, "stringValue")) {
        if ((rc = j_string(j, &s, &esc)) || (rc = j_emit_string(j, b, s, esc))) return rc;
        sc->type = V_STRING;
    } else if (KEY_IS(k, "bytesValue")) {
        /* decode.typed_bytes of the decoded bytes: canonical standard base64 is kept as is */
        if ((rc = j_string(j, &s, &esc))) return rc;
        if (esc || !canonical_base64(s.p, s.n)) return DECLINE;
        if ((rc = buf_put(b, "{\"bytesValue\":\"", 15)) || (rc = buf_put(b, s.p, s.n)) || (rc = buf_put(b, "\"}", 2)))
            return rc;
    } else if (KEY_IS(k, "intValue")) {
        if ((rc = j_int_value(j, b))) return rc;
        sc->type = V_INT;
    } else if (KEY_IS(k, "doubleValue")) {
        if ((rc = j_double_value(j, b))) return rc;
    } else if (KEY_IS(k, "boolValue")) {
        if (j->p < j->end && *j->p == 't') {
            if (j_literal(j, "true", 4)) return DECLINE;
            if ((rc = buf_put(b, "true", 4))) return rc;
        } else {
            if (j_literal(j, "false", 5)) return DECLINE;
            if ((rc = buf_put(b, "false", 5))) return rc;
        }
    } else if (KEY_IS(k, "arrayValue")) {
        if (level >= MAX_ATTRIBUTE_DEPTH) return DECLINE;
        if ((rc = j_values(j, b, depth + 1, level + 1, 0))) return rc;
    } else if (KEY_IS(k, "kvlistValue")) {
        if (level >= MAX_ATTRIBUTE_DEPTH) return DECLINE;
        if ((rc = j_values(j, b, depth + 1, level + 1, 1))) return rc;
    } else {
        return DECLINE;
    }
    if ((rc = j_next(j, '}', &more))) return rc;
    if (more) return DECLINE; /* several values in one AnyValue */
    sc->vlen = b->len - sc->voff;
    return 0;
}

/* One KeyValue object -> "key":value (the key may follow the value). */
static int j_kv(J *j, Buf *b, int depth, int level, KOff *key, JScalar *sc) {
    int rc, more, have_key = 0, have_val = 0;
    size_t pos0 = b->len;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k, s;
        int esc;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "key")) {
            if (have_key) return DECLINE;
            have_key = 1;
            if ((rc = j_string(j, &s, &esc))) return rc;
            if (!have_val) {
                key->off = b->len;
                if ((rc = j_emit_string(j, b, s, esc))) return rc;
                key->len = b->len - key->off;
                if ((rc = buf_byte(b, ':'))) return rc;
            } else {
                j->tmp2.len = 0;
                if ((rc = j_emit_string(j, &j->tmp2, s, esc)) || (rc = buf_byte(&j->tmp2, ':'))) return rc;
                size_t kt = j->tmp2.len;
                if (buf_grow(b, kt)) return NOMEM;
                memmove(b->p + pos0 + kt, b->p + pos0, b->len - pos0);
                memcpy(b->p + pos0, j->tmp2.p, kt);
                b->len += kt;
                key->off = pos0;
                key->len = kt - 1;
                sc->voff += kt;
            }
        } else if (KEY_IS(k, "value")) {
            if (have_val) return DECLINE;
            have_val = 1;
            if ((rc = j_any(j, b, depth + 1, level, sc))) return rc;
        } else if ((rc = j_skip(j, depth + 1))) { /* kv.get ignores other members */
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    if (!have_key) return DECLINE;
    if (!have_val) {
        sc->type = V_NULL;
        sc->voff = b->len;
        sc->vlen = 4;
        return buf_put(b, "null", 4);
    }
    return 0;
}

static uint32_t fnv1a(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* [KeyValue, ...] -> {"k":v,...}; a duplicate key declines. With want_rid, the `rid` value is
 * left in j->rid / j->rid_type as decode._rid gives it. */
static int j_attr_list(J *j, Buf *b, int depth, int level, int want_rid) {
    KOff stack_keys[64], *keys = stack_keys;
    size_t nk = 0, capk = 64;
    int rc, more;
    if (depth > J_MAX_DEPTH) return DECLINE;
    if ((rc = j_open(j, '[', ']', &more)) || (rc = buf_byte(b, '{'))) return rc;
    while (more) {
        KOff key;
        JScalar sc;
        if (nk && (rc = buf_byte(b, ','))) break;
        if ((rc = j_kv(j, b, depth + 1, level, &key, &sc))) break;
        if (level > 0 && key.len >= 2 && typed_key((const uint8_t *)b->p + key.off + 1, key.len - 2)) {
            rc = DECLINE; /* a nested kvlist that may need decode.typed_kvlist's wrapper */
            break;
        }
        key.hash = fnv1a(b->p + key.off, key.len);
        for (size_t i = 0; i < nk && !rc; i++)
            if (keys[i].hash == key.hash && keys[i].len == key.len &&
                memcmp(b->p + keys[i].off, b->p + key.off, key.len) == 0)
                rc = DECLINE;
        if (rc) break;
        if (want_rid && key.len == 5 && memcmp(b->p + key.off, "\"rid\"", 5) == 0) {
            j->rid_type = sc.type;
            if (sc.type == V_STRING) {
                rc = j_unescape((const uint8_t *)b->p + sc.voff + 1, sc.vlen - 2, &j->rid);
            } else if (sc.type == V_INT) {
                j->rid.len = 0;
                rc = buf_put(&j->rid, b->p + sc.voff, sc.vlen);
            } else if (sc.type != V_NULL) {
                rc = DECLINE; /* str() of a double, bool, list or dict */
            }
            if (rc) break;
        }
        if (nk == capk) {
            KOff *nkeys = malloc(2 * capk * sizeof *nkeys);
            if (!nkeys) { rc = NOMEM; break; }
            memcpy(nkeys, keys, nk * sizeof *keys);
            if (keys != stack_keys) free(keys);
            keys = nkeys;
            capk *= 2;
        }
        keys[nk++] = key;
        if ((rc = j_next(j, ']', &more))) break;
    }
    if (!rc) rc = buf_byte(b, '}');
    if (keys != stack_keys) free(keys);
    return rc;
}

/* ------------------------------------------------------------------- ids, times, enums */

static inline int hexdig(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* A hex id of `width` digits (or, with half, also width / 2 left-padded with zeros), lower-cased
 * into out; all zeros declines. */
static int j_hex_id_z(J *j, uint8_t *out, size_t width, int half, int *nonzero_out);

static int j_hex_id(J *j, uint8_t *out, size_t width, int half) {
    int nz;
    int rc = j_hex_id_z(j, out, width, half, &nz);
    return rc ? rc : (nz ? 0 : DECLINE);
}

/* j_hex_id, all zeros allowed (reported in *nonzero_out). */
static int j_hex_id_z(J *j, uint8_t *out, size_t width, int half, int *nonzero_out) {
    Slice s;
    int esc;
    if (j_string(j, &s, &esc) || esc) return DECLINE;
    size_t pad;
    if (s.n == width) pad = 0;
    else if (half && s.n == width / 2) pad = width / 2;
    else return DECLINE;
    memset(out, '0', pad);
    int nonzero = 0;
    for (size_t i = 0; i < s.n; i++) {
        int d = hexdig(s.p[i]);
        if (d < 0) return DECLINE;
        nonzero |= d;
        out[pad + i] = (uint8_t)HEXL[d];
    }
    *nonzero_out = nonzero != 0;
    return 0;
}

/* A uint32 (flags, dropped counts) as a JSON integer number (decode._uint32; a string declines). */
static int j_uint32(J *j, int64_t *out) {
    Num num;
    if (j->p >= j->end || *j->p == '"') return DECLINE;
    if (j_number(j, &num) || !num.is_int || num.p[0] == '-' || num.n > 10) return DECLINE;
    int64_t v = 0;
    for (size_t i = 0; i < num.n; i++) v = v * 10 + (num.p[i] - '0');
    if (v > 4294967295LL) return DECLINE;
    *out = v;
    return 0;
}

/* Nanoseconds as a decimal string (decode._nanos: str.isdigit, 0..INT64_MAX). */
static int j_nanos(J *j, int64_t *out) {
    Slice s;
    int esc;
    if (j_string(j, &s, &esc) || esc || s.n == 0) return DECLINE;
    uint64_t v = 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned d = (unsigned)(s.p[i] - '0');
        if (d > 9) return DECLINE;
        if (v > ((uint64_t)INT64_MAX - d) / 10) return DECLINE;
        v = v * 10 + d;
    }
    *out = (int64_t)v;
    return 0;
}

static const char *const SPAN_KIND_NAMES[] = {"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER",
                                              "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"};
static const char *const STATUS_CODE_NAMES[] = {"STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"};

/* An enum: an int32 (proto3 enums are open) or one of its names. */
static int j_enum(J *j, const char *const *names, int count, int32_t *out) {
    if (j->p < j->end && *j->p == '"') {
        Slice s;
        int esc;
        if (j_string(j, &s, &esc) || esc) return DECLINE;
        for (int i = 0; i < count; i++)
            if (strlen(names[i]) == s.n && memcmp(names[i], s.p, s.n) == 0) {
                *out = (int32_t)i;
                return 0;
            }
        return DECLINE;
    }
    Num num;
    if (j_number(j, &num) || !num.is_int || num.n > 11) return DECLINE;
    int64_t v = 0;
    for (size_t i = num.p[0] == '-'; i < num.n; i++) v = v * 10 + (num.p[i] - '0');
    if (num.p[0] == '-') v = -v;
    if (v < INT32_MIN || v > INT32_MAX) return DECLINE;
    *out = (int32_t)v;
    return 0;
}

/* ------------------------------------------------------------------- spans, events, links */

static int j_event(J *j, int64_t span_seq, int32_t seq, int depth) {
    Out *o = j->o;
    Slice name = {NULL, 0};
    int64_t t = 0, dropped = 0;
    unsigned seen = 0;
    int rc, more;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "timeUnixNano")) {
            SEEN(1);
            if ((rc = j_nanos(j, &t))) return rc;
        } else if (KEY_IS(k, "name")) {
            SEEN(2);
            if ((rc = j_text(j, &j->ev_name, &name))) return rc;
        } else if (KEY_IS(k, "attributes")) {
            SEEN(4);
            if ((rc = j_attr_list(j, &o->ev_attributes.data, depth + 1, 0, 0))) return rc;
        } else if (KEY_IS(k, "droppedAttributesCount")) {
            SEEN(8);
            if ((rc = j_uint32(j, &dropped))) return rc;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    if (!(seen & 4) && buf_put(&o->ev_attributes.data, "{}", 2)) return NOMEM;
    if ((rc = strcol_end_row(&o->ev_attributes, 1))) return rc;
    /* a time of 0 and an empty name are absent (NULL), as protobuf cannot tell them apart */
    return emit_event(o, span_seq, seq, t, t != 0, name, name.n != 0, dropped);
}

static int j_link(J *j, int64_t span_seq, int32_t seq, int depth) {
    Out *o = j->o;
    uint8_t trace[32], sid[16];
    Slice state = {NULL, 0};
    int64_t flags = 0, dropped = 0;
    unsigned seen = 0;
    int rc, more;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "traceId")) {
            SEEN(1);
            if ((rc = j_hex_id(j, trace, 32, 1))) return rc;
        } else if (KEY_IS(k, "spanId")) {
            SEEN(2);
            if ((rc = j_hex_id(j, sid, 16, 0))) return rc;
        } else if (KEY_IS(k, "attributes")) {
            SEEN(4);
            if ((rc = j_attr_list(j, &o->ln_attributes.data, depth + 1, 0, 0))) return rc;
        } else if (KEY_IS(k, "traceState")) {
            SEEN(8);
            if ((rc = j_text(j, &j->ln_state, &state))) return rc;
        } else if (KEY_IS(k, "flags")) {
            SEEN(16);
            if ((rc = j_uint32(j, &flags))) return rc;
        } else if (KEY_IS(k, "droppedAttributesCount")) {
            SEEN(32);
            if ((rc = j_uint32(j, &dropped))) return rc;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    /* an absent id is NULL (decode._link_ids; zero or malformed ids declined above) */
    if (!(seen & 4) && buf_put(&o->ln_attributes.data, "{}", 2)) return NOMEM;
    if ((rc = strcol_end_row(&o->ln_attributes, 1))) return rc;
    return emit_link(o, span_seq, seq, (seen & 1) ? trace : NULL, (seen & 2) ? sid : NULL, state, flags, dropped);
}

static int j_status(J *j, int32_t *code, Slice *msg, int depth) {
    unsigned seen = 0;
    int rc, more;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "code")) {
            SEEN(1);
            if ((rc = j_enum(j, STATUS_CODE_NAMES, 3, code))) return rc;
        } else if (KEY_IS(k, "message")) {
            SEEN(2);
            if ((rc = j_text(j, &j->status_msg, msg))) return rc;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    return 0;
}

/* A list of objects each parsed by fn(j, span_seq, index, depth). */
static int j_list(J *j, int (*fn)(J *, int64_t, int32_t, int), int64_t span_seq, int depth) {
    int rc, more;
    int32_t i = 0;
    if ((rc = j_open(j, '[', ']', &more))) return rc;
    while (more) {
        if ((rc = fn(j, span_seq, i++, depth))) return rc;
        if ((rc = j_next(j, ']', &more))) return rc;
    }
    return 0;
}

static int j_span(J *j, int32_t res_idx, int32_t scope_idx, int depth) {
    Out *o = j->o;
    uint8_t trace[32], sid[16], parent[16];
    Slice name = {(const uint8_t *)"", 0}, msg = {NULL, 0}, state = {NULL, 0};
    int32_t kind = 0, code = 0;
    int64_t start = 0, end = 0, seq = (int64_t)o->n;
    int64_t flags = 0, d_attrs = 0, d_events = 0, d_links = 0;
    unsigned seen = 0;
    int rc, more, have_parent = 0;
    j->rid_type = V_NULL;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "traceId")) {
            SEEN(1);
            if ((rc = j_hex_id(j, trace, 32, 1))) return rc;
        } else if (KEY_IS(k, "spanId")) {
            SEEN(2);
            if ((rc = j_hex_id(j, sid, 16, 0))) return rc;
        } else if (KEY_IS(k, "parentSpanId")) {
            SEEN(4);
            if (j->end - j->p >= 2 && j->p[0] == '"' && j->p[1] == '"') {
                j->p += 2; /* "" is no parent */
            } else {
                if ((rc = j_hex_id_z(j, parent, 16, 0, &have_parent))) return rc; /* all zeros: a root */
            }
        } else if (KEY_IS(k, "name")) {
            SEEN(8);
            if ((rc = j_text(j, &j->span_name, &name))) return rc;
        } else if (KEY_IS(k, "kind")) {
            SEEN(16);
            if ((rc = j_enum(j, SPAN_KIND_NAMES, 6, &kind))) return rc;
        } else if (KEY_IS(k, "startTimeUnixNano")) {
            SEEN(32);
            if ((rc = j_nanos(j, &start))) return rc;
        } else if (KEY_IS(k, "endTimeUnixNano")) {
            SEEN(64);
            if ((rc = j_nanos(j, &end))) return rc;
        } else if (KEY_IS(k, "status")) {
            SEEN(128);
            if ((rc = j_status(j, &code, &msg, depth + 1))) return rc;
        } else if (KEY_IS(k, "attributes")) {
            SEEN(256);
            if ((rc = j_attr_list(j, &o->attributes.data, depth + 1, 0, 1))) return rc;
        } else if (KEY_IS(k, "events")) {
            SEEN(512);
            if ((rc = j_list(j, j_event, seq, depth + 1))) return rc;
        } else if (KEY_IS(k, "links")) {
            SEEN(1024);
            if ((rc = j_list(j, j_link, seq, depth + 1))) return rc;
        } else if (KEY_IS(k, "traceState")) {
            SEEN(2048);
            if ((rc = j_text(j, &j->trace_state, &state))) return rc;
        } else if (KEY_IS(k, "flags")) {
            SEEN(4096);
            if ((rc = j_uint32(j, &flags))) return rc;
        } else if (KEY_IS(k, "droppedAttributesCount")) {
            SEEN(8192);
            if ((rc = j_uint32(j, &d_attrs))) return rc;
        } else if (KEY_IS(k, "droppedEventsCount")) {
            SEEN(16384);
            if ((rc = j_uint32(j, &d_events))) return rc;
        } else if (KEY_IS(k, "droppedLinksCount")) {
            SEEN(32768);
            if ((rc = j_uint32(j, &d_links))) return rc;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    if ((seen & 3) != 3) return DECLINE;
    if (!(seen & 256) && buf_put(&o->attributes.data, "{}", 2)) return NOMEM;
    if ((rc = strcol_end_row(&o->attributes, 1))) return rc;
    /* a time of 0 is absent (NULL), as protobuf cannot tell them apart */
    SpanRow row = {trace, sid, have_parent ? parent : NULL, name, kind, code, start, end,
                   start != 0, end != 0, msg, j->rid_type != V_NULL,
                   {(const uint8_t *)j->rid.p, j->rid.len}, res_idx, scope_idx,
                   state, flags, d_attrs, d_events, d_links};
    return emit_span(o, &row);
}

/* ------------------------------------------------------------------- resources, scopes, lines */

/* The raw JSON text of the next string value: (offset in the chunk, length with quotes). */
static int j_raw_string(J *j, int64_t *off, int64_t *len) {
    const uint8_t *start = j->p;
    Slice s;
    int esc, rc;
    if ((rc = j_string(j, &s, &esc))) return rc;
    if (esc && (rc = j_unescape(s.p, s.n, &j->tmp))) return rc;
    *off = start - j->o->base;
    *len = j->p - start;
    return 0;
}

/* The raw JSON text of the next object value: (offset in the chunk, length). */
static int j_raw_object(J *j, int64_t *off, int64_t *len, int depth) {
    int rc;
    if (j->p >= j->end || *j->p != '{') return DECLINE;
    const uint8_t *start = j->p;
    if ((rc = j_skip(j, depth))) return rc;
    *off = start - j->o->base;
    *len = j->p - start;
    return 0;
}

static int j_scope_spans(J *j, int32_t res_idx, int depth) {
    Out *o = j->o;
    int64_t rec[4] = {-1, -1, -1, -1};
    size_t at = o->scopes.len;
    int32_t scope_idx = (int32_t)(at / sizeof rec);
    unsigned seen = 0;
    int rc, more;
    if (buf_put(&o->scopes, rec, sizeof rec)) return NOMEM;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "scope")) {
            SEEN(1);
            if ((rc = j_raw_object(j, &rec[0], &rec[1], depth + 1))) return rc;
            memcpy(o->scopes.p + at, rec, sizeof rec);
        } else if (KEY_IS(k, "schemaUrl")) {
            SEEN(4);
            if ((rc = j_raw_string(j, &rec[2], &rec[3]))) return rc;
            memcpy(o->scopes.p + at, rec, sizeof rec);
        } else if (KEY_IS(k, "spans")) {
            int amore;
            SEEN(2);
            if ((rc = j_open(j, '[', ']', &amore))) return rc;
            while (amore) {
                if ((rc = j_span(j, res_idx, scope_idx, depth + 1))) return rc;
                if ((rc = j_next(j, ']', &amore))) return rc;
            }
        } else if (KEY_IS(k, "instrumentationLibrary")) {
            return DECLINE;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    return 0;
}

static int j_resource_spans(J *j, int depth) {
    Out *o = j->o;
    int64_t rec[4] = {-1, -1, -1, -1};
    size_t at = o->resources.len;
    int32_t res_idx = (int32_t)(at / sizeof rec);
    int64_t start_off = j->p - o->base;
    unsigned seen = 0;
    int rc, more;
    if (buf_put(&o->resources, rec, sizeof rec)) return NOMEM;
    if (buf_put(&o->rs_off, &start_off, sizeof start_off)) return NOMEM;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "resource")) {
            SEEN(1);
            if ((rc = j_raw_object(j, &rec[0], &rec[1], depth + 1))) return rc;
            memcpy(o->resources.p + at, rec, sizeof rec);
        } else if (KEY_IS(k, "schemaUrl")) {
            SEEN(4);
            if ((rc = j_raw_string(j, &rec[2], &rec[3]))) return rc;
            memcpy(o->resources.p + at, rec, sizeof rec);
        } else if (KEY_IS(k, "scopeSpans")) {
            int amore;
            SEEN(2);
            if ((rc = j_open(j, '[', ']', &amore))) return rc;
            while (amore) {
                if ((rc = j_scope_spans(j, res_idx, depth + 1))) return rc;
                if ((rc = j_next(j, ']', &amore))) return rc;
            }
        } else if (KEY_IS(k, "instrumentationLibrarySpans")) {
            return DECLINE;
        } else if ((rc = j_unknown(j, k, depth + 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    return 0;
}

/* One non-blank line: exactly one object (JSON whitespace around it). */
static int j_line(J *j) {
    int rc, more, keys = 0, have_rs = 0;
    if ((rc = j_open(j, '{', '}', &more))) return rc;
    while (more) {
        Slice k;
        keys++;
        if ((rc = j_key(j, &k))) return rc;
        if (KEY_IS(k, "resourceSpans")) {
            int amore;
            if (have_rs) return DECLINE;
            have_rs = 1;
            if ((rc = j_open(j, '[', ']', &amore))) return rc;
            while (amore) {
                if ((rc = j_resource_spans(j, 1))) return rc;
                if ((rc = j_next(j, ']', &amore))) return rc;
            }
        } else if ((rc = j_unknown(j, k, 1))) {
            return rc;
        }
        if ((rc = j_next(j, '}', &more))) return rc;
    }
    if (keys && !have_rs) return DECLINE; /* "object has no resourceSpans": quarantined */
    j_ws(j);
    return j->p == j->end ? 0 : DECLINE;
}

static inline int py_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static int json_lines(Out *o, const uint8_t *p, size_t n) {
    int rc = 0;
    o->base = p;
    StrCol *cols[] = {&o->name, &o->status_message, &o->attributes, &o->rid, &o->ev_name,
                      &o->ev_attributes, &o->ln_attributes, &o->trace_state, &o->ln_trace_state};
    for (size_t i = 0; i < sizeof cols / sizeof *cols; i++)
        if ((rc = strcol_init(cols[i]))) return rc;
    if (!utf8_valid(p, n)) return DECLINE;
    J j;
    memset(&j, 0, sizeof j);
    j.o = o;
    const uint8_t *q = p, *end = p + n;
    while (!rc && q < end) {
        const uint8_t *nl = memchr(q, '\n', (size_t)(end - q));
        const uint8_t *le = nl ? nl : end, *s = q;
        while (s < le && py_space(*s)) s++;
        if (s < le) { /* not blank (bytes.strip()) */
            j.p = q;
            j.end = le;
            rc = j_line(&j);
        }
        q = nl ? nl + 1 : end;
    }
    Buf *bufs[] = {&j.tmp, &j.tmp2, &j.span_name, &j.status_msg, &j.ev_name, &j.rid, &j.trace_state, &j.ln_state};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
    return rc;
}

/* ------------------------------------------------------------------------------ Python */

/* A column buffer handed to Python without a copy: the Buf's own memory, freed with the object.
   Python reads it through the buffer protocol only (np.frombuffer, pa.py_buffer), as it read the
   bytes objects this replaced; copying every column into a bytes object was a second pass over
   all of a chunk's output (about a kilobyte a span), each page of it faulted in afresh. */
typedef struct {
    PyObject_HEAD
    char *p;
    Py_ssize_t len;
} Owned;

static int owned_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    Owned *o = (Owned *)self;
    return PyBuffer_FillInfo(view, self, o->p, o->len, 1, flags);
}

static void owned_dealloc(PyObject *self) {
    free(((Owned *)self)->p);
    Py_TYPE(self)->tp_free(self);
}

static Py_ssize_t owned_length(PyObject *self) { return ((Owned *)self)->len; }

static PyBufferProcs owned_as_buffer = {owned_getbuffer, NULL};
static PySequenceMethods owned_as_sequence = {.sq_length = owned_length};

static PyTypeObject OwnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_otlpfast.Column",
    .tp_basicsize = sizeof(Owned),
    .tp_dealloc = owned_dealloc,
    .tp_as_buffer = &owned_as_buffer,
    .tp_as_sequence = &owned_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read-only column buffer of the decoder's output (the buffer protocol).",
};

static PyObject *bytes_of(Buf *b) {
    if (!b->len) return PyBytes_FromStringAndSize("", 0);
    Owned *o = PyObject_New(Owned, &OwnedType);
    if (!o) return NULL;
    char *p = b->len < b->cap ? realloc(b->p, b->len) : b->p;  /* give back the doubling's slack */
    o->p = p ? p : b->p;
    o->len = (Py_ssize_t)b->len;
    b->p = NULL;  /* now the object's: out_free leaves it */
    b->len = b->cap = 0;
    return (PyObject *)o;
}

static PyObject *strcol_tuple(StrCol *c) {
    return Py_BuildValue("(NNN)", bytes_of(&c->off), bytes_of(&c->data), bytes_of(&c->valid));
}

/* The columns of a parsed Out as decode() / decode_json() return them (None when declined). */
static PyObject *out_result(Out *o, int rc) {
    PyObject *result = NULL;
    if (rc == NOMEM) {
        PyErr_NoMemory();
    } else if (rc) {
        result = Py_NewRef(Py_None);
    } else {
        result = Py_BuildValue(
            "{s:n,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,"
            "s:N,s:n,s:N,s:N,s:N,s:N,s:N,s:N,s:n,s:N,s:N,s:N,s:N,s:N}",
            "n", (Py_ssize_t)o->n,
            "trace_id", bytes_of(&o->trace_id), "span_id", bytes_of(&o->span_id),
            "parent", bytes_of(&o->parent), "parent_valid", bytes_of(&o->parent_valid),
            "name", strcol_tuple(&o->name), "status_message", strcol_tuple(&o->status_message),
            "attributes", strcol_tuple(&o->attributes), "rid", strcol_tuple(&o->rid),
            "kind", bytes_of(&o->kind), "status_code", bytes_of(&o->status_code),
            "start", bytes_of(&o->start), "start_valid", bytes_of(&o->start_valid),
            "end", bytes_of(&o->end), "end_valid", bytes_of(&o->end_valid),
            "res_idx", bytes_of(&o->res_idx), "scope_idx", bytes_of(&o->scope_idx),
            "resources", bytes_of(&o->resources), "scopes", bytes_of(&o->scopes),
            "rs_off", bytes_of(&o->rs_off),
            "n_ev", (Py_ssize_t)o->n_ev,
            "ev_span", bytes_of(&o->ev_span), "ev_seq", bytes_of(&o->ev_seq),
            "ev_time", bytes_of(&o->ev_time), "ev_time_valid", bytes_of(&o->ev_time_valid),
            "ev_name", strcol_tuple(&o->ev_name), "ev_attributes", strcol_tuple(&o->ev_attributes),
            "n_ln", (Py_ssize_t)o->n_ln,
            "ln_span", bytes_of(&o->ln_span), "ln_seq", bytes_of(&o->ln_seq),
            "ln_trace", bytes_of(&o->ln_trace), "ln_span_id", bytes_of(&o->ln_span_id),
            "ln_attributes", strcol_tuple(&o->ln_attributes));
        if (result) {
            /* the rest of the OTLP model (decode.SPAN_SCHEMA's later columns) */
            struct { const char *k; PyObject *v; } more[] = {
                {"trace_state", strcol_tuple(&o->trace_state)}, {"flags", bytes_of(&o->flags)},
                {"dropped_attrs", bytes_of(&o->dropped_attrs)}, {"dropped_events", bytes_of(&o->dropped_events)},
                {"dropped_links", bytes_of(&o->dropped_links)}, {"ev_dropped", bytes_of(&o->ev_dropped)},
                {"ln_trace_valid", bytes_of(&o->ln_trace_valid)}, {"ln_span_valid", bytes_of(&o->ln_span_valid)},
                {"ln_trace_state", strcol_tuple(&o->ln_trace_state)}, {"ln_flags", bytes_of(&o->ln_flags)},
                {"ln_dropped", bytes_of(&o->ln_dropped)},
            };
            for (size_t i = 0; i < sizeof more / sizeof *more; i++) {
                if (!more[i].v || !result || PyDict_SetItemString(result, more[i].k, more[i].v) < 0)
                    Py_CLEAR(result);
                Py_XDECREF(more[i].v);
            }
        }
    }
    out_free(o);
    return result;
}

/* Run a parser over a bytes-like object with the GIL released; its columns, or None. */
static PyObject *parse(PyObject *arg, int (*parser)(Out *, const uint8_t *, size_t)) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Out o;
    memset(&o, 0, sizeof o);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = parser(&o, (const uint8_t *)view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return out_result(&o, rc);
}

static PyObject *decode(PyObject *self, PyObject *arg) {
    (void)self;
    return parse(arg, traces);
}

static PyObject *decode_json(PyObject *self, PyObject *arg) {
    (void)self;
    return parse(arg, json_lines);
}

static PyObject *json_double_py(PyObject *self, PyObject *arg) {
    (void)self;
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    Buf b = {NULL, 0, 0};
    if (json_double(&b, x)) { buf_free(&b); return PyErr_NoMemory(); }
    PyObject *s = PyUnicode_FromStringAndSize(b.p, (Py_ssize_t)b.len);
    buf_free(&b);
    return s;
}

/* count_newlines(buf): the number of '\n' bytes in a bytes-like object (the line numbers of the
 * JSON lines framing, ingest/sources.py; bytes.count scans a byte at a time). */
static PyObject *count_newlines(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *p = view.buf, *end = p + view.len;
    size_t n = 0;
    Py_BEGIN_ALLOW_THREADS
#ifdef __SSE2__
    const __m128i nl = _mm_set1_epi8('\n');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        n += (size_t)__builtin_popcount((unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, nl)));
        p += 16;
    }
#endif
    for (; p < end; p++) n += *p == '\n';
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromSize_t(n);
}

static PyMethodDef methods[] = {
    {"count_newlines", count_newlines, METH_O, "count_newlines(buf) -> the number of newline bytes in buf."},
    {"decode", decode, METH_O,
     "decode(data) -> dict of staging column buffers, or None when the validating decoder must "
     "decide (see ingest/protofast.py)."},
    {"decode_json", decode_json, METH_O,
     "decode_json(chunk) -> the same dict for whole OTLP JSON lines (resources and scope names as "
     "raw JSON text slices), or None when the validating decoder must decide (see "
     "ingest/jsonfast.py)."},
    {"json_double", json_double_py, METH_O, "json_double(x) -> the JSON text orjson writes for x."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlpfast",
                                    "OTLP protobuf traces and JSON lines -> staging column buffers (C).", -1, methods};

PyMODINIT_FUNC PyInit__otlpfast(void) {
    if (PyType_Ready(&OwnedType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "MAX_ATTRIBUTE_DEPTH", MAX_ATTRIBUTE_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
