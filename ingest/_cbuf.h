/* The growable buffer both C extensions write their column buffers into (ingest/_otlpfast.c,
 * ingest/_kvfast.c). The includer defines NOMEM (the out-of-memory return code) first. */
#ifndef KVTRACE_CBUF_H
#define KVTRACE_CBUF_H

#include <stdlib.h>
#include <string.h>

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t extra) {
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const void *src, size_t n) {
    if (b->len + n > b->cap && buf_grow(b, n)) return NOMEM;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

#define PUT_VAL(buf, type, v)                             \
    do {                                                  \
        type _v = (v);                                    \
        if (buf_put((buf), &_v, sizeof _v)) return NOMEM; \
    } while (0)

static void buf_free(Buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

#endif
