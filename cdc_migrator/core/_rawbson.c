/* The raw-BSON hot path of cdc_migrator.core.rawdoc and .patch, compiled (issue 27).
 *
 * Three functions, each the exact counterpart of Python code that stays in the package and
 * remains the reference (tests/core/test_rawbson_compiled.py compares them on generated
 * documents of every BSON type):
 *
 *   scan(data)                   -> rawdoc.RawView's element index, all of it at once
 *   guard(data, index, fields)   -> rawdoc.raw_guard's bytes and top-level names
 *   update(data, index, patch, unset)
 *                                -> patch._update_of's $set/$unset: (to_set, to_unset, bytes)
 *
 * Each returns None for anything it does not handle (malformed BSON, a name a query reads as
 * a path or an operator, a patch value of a type not encoded here, ...): the caller then takes
 * the Python path, which handles it or raises the error it always raised. Nothing here raises
 * for a document's or a transform's content; only for a caller passing the wrong types.
 *
 * BSON is little-endian; values are copied byte for byte, and numbers are written with
 * PyFloat_Pack8 and explicit byte order, so the host's byte order does not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- a growing byte buffer ---------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    char *grown = PyMem_Realloc(b->data, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = grown;
    b->cap = cap;
    return 0;
}

static int put(Buf *b, const void *src, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

static int put_byte(Buf *b, unsigned char c) { return put(b, &c, 1); }

static void write_i32(char *at, int64_t v) {
    uint32_t u = (uint32_t)(int32_t)v;
    at[0] = (char)(u & 0xff);
    at[1] = (char)((u >> 8) & 0xff);
    at[2] = (char)((u >> 16) & 0xff);
    at[3] = (char)((u >> 24) & 0xff);
}

static int put_i32(Buf *b, int64_t v) {
    if (buf_reserve(b, 4) < 0)
        return -1;
    write_i32(b->data + b->len, v);
    b->len += 4;
    return 0;
}

static int put_i64(Buf *b, long long v) {
    if (buf_reserve(b, 8) < 0)
        return -1;
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        b->data[b->len + i] = (char)((u >> (8 * i)) & 0xff);
    b->len += 8;
    return 0;
}

/* A document begins: room for its length; returns where it starts (-1 on error). */
static Py_ssize_t doc_begin(Buf *b) {
    Py_ssize_t at = b->len;
    return put_i32(b, 0) < 0 ? -1 : at;
}

/* ... and ends: its terminating zero, and its length written where it began. */
static int doc_end(Buf *b, Py_ssize_t at) {
    if (put_byte(b, 0) < 0)
        return -1;
    write_i32(b->data + at, b->len - at);
    return 0;
}

/* An element's header: its type byte and its name as a C string. */
static int put_header(Buf *b, unsigned char kind, const char *name, Py_ssize_t n) {
    if (put_byte(b, kind) < 0 || put(b, name, n) < 0)
        return -1;
    return put_byte(b, 0);
}

static int put_string_value(Buf *b, const char *text, Py_ssize_t n) {
    if (put_i32(b, n + 1) < 0 || put(b, text, n) < 0)
        return -1;
    return put_byte(b, 0);
}

static int32_t read_i32(const unsigned char *p) {
    return (int32_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                     ((uint32_t)p[3] << 24));
}

static int64_t read_i64(const unsigned char *p) {
    uint64_t u = 0;
    for (int i = 7; i >= 0; i--)
        u = (u << 8) | p[i];
    return (int64_t)u;
}

/* ---- scan ---------------------------------------------------------------------------------- */

/* The size of the value of type `kind` at `start`, or -1 for one this does not know or that
 * runs past `limit`. */
static Py_ssize_t value_size(const unsigned char *d, Py_ssize_t start, Py_ssize_t limit,
                             unsigned char kind) {
    switch (kind) {
    case 0x06: case 0x0A: case 0xFF: case 0x7F:  /* undefined, null, MinKey, MaxKey */
        return 0;
    case 0x08:  /* bool */
        return 1;
    case 0x10:  /* int32 */
        return 4;
    case 0x01: case 0x09: case 0x11: case 0x12:  /* double, date, Timestamp, int64 */
        return 8;
    case 0x07:  /* ObjectId */
        return 12;
    case 0x13:  /* Decimal128 */
        return 16;
    case 0x0B: {  /* regex: two C strings, no length (an empty one can end the document) */
        const unsigned char *end = memchr(d + start, 0, (size_t)(limit - start));
        if (end == NULL)
            return -1;
        end = memchr(end + 1, 0, (size_t)(limit - (end + 1 - d)));
        return end == NULL ? -1 : end + 1 - (d + start);
    }
    }
    if (start + 4 > limit)
        return -1;
    int32_t n = read_i32(d + start);
    switch (kind) {
    case 0x02: case 0x0D: case 0x0E:  /* string, JavaScript code, symbol */
        return n < 1 ? -1 : 4 + (Py_ssize_t)n;
    case 0x03: case 0x04: case 0x0F:  /* document, array, code with scope */
        return n < 5 ? -1 : (Py_ssize_t)n;
    case 0x05:  /* binary */
        return n < 0 ? -1 : 5 + (Py_ssize_t)n;
    case 0x0C:  /* DBPointer: a string and an ObjectId */
        return n < 1 ? -1 : 16 + (Py_ssize_t)n;
    }
    return -1;
}

PyDoc_STRVAR(scan_doc,
"scan(data: bytes) -> dict[str, tuple[int, int, int]] | None\n\n"
"Each top-level name of the BSON document ``data`` -> (element start, value start, element\n"
"end), the first of a repeated name; None for bytes that are not a well-formed document.");

static PyObject *scan(PyObject *self, PyObject *arg) {
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "scan() takes bytes");
        return NULL;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(arg);
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n < 5 || read_i32(d) != n || d[n - 1] != 0)
        Py_RETURN_NONE;
    PyObject *index = PyDict_New();
    if (index == NULL)
        return NULL;
    Py_ssize_t pos = 4, last = n - 1;
    while (pos < last) {
        unsigned char kind = d[pos];
        const unsigned char *nul = memchr(d + pos + 1, 0, (size_t)(last - pos - 1));
        if (nul == NULL)
            goto malformed;
        Py_ssize_t start = nul + 1 - d;
        Py_ssize_t size = value_size(d, start, last, kind);
        if (size < 0 || start + size > last)
            goto malformed;
        PyObject *name = PyUnicode_DecodeUTF8((const char *)d + pos + 1, nul - (d + pos + 1),
                                              "strict");
        if (name == NULL) {
            PyErr_Clear();
            goto malformed;
        }
        PyObject *entry = Py_BuildValue("(nnn)", pos, start, start + size);
        if (entry == NULL) {
            Py_DECREF(name);
            Py_DECREF(index);
            return NULL;
        }
        PyObject *kept = PyDict_SetDefault(index, name, entry);
        Py_DECREF(name);
        Py_DECREF(entry);
        if (kept == NULL) {
            Py_DECREF(index);
            return NULL;
        }
        pos = start + size;
    }
    return index;
malformed:
    Py_DECREF(index);
    Py_RETURN_NONE;
}

/* A name's UTF-8 bytes and their length, or NULL for a name left to the Python path: one
 * that is no string, cannot be encoded (a lone surrogate), or holds a NUL (no BSON name can). */
static const char *name_text(PyObject *name, Py_ssize_t *len) {
    if (!PyUnicode_CheckExact(name))
        return NULL;
    const char *text = PyUnicode_AsUTF8AndSize(name, len);
    if (text == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return memchr(text, 0, (size_t)*len) == NULL ? text : NULL;
}

/* `text` appended to the list `names` as a str: 0, or -1 on an error. */
static int append_name(PyObject *names, const char *text) {
    PyObject *name = PyUnicode_FromString(text);
    if (name == NULL)
        return -1;
    int appended = PyList_Append(names, name);
    Py_DECREF(name);
    return appended;
}

/* ---- guard --------------------------------------------------------------------------------- */

/* The milliseconds since the epoch a ``datetime`` holds (CODEC_OPTIONS decodes these to one;
 * others to a DatetimeMS, which plain equality does not pin): rawdoc._DATE_RANGE. */
#define DATE_MIN (-62135596800000LL)
#define DATE_MAX (253402300799999LL)

/* An entry of the index: (element start, value start, element end) within `n` bytes. */
static int entry_of(PyObject *entry, Py_ssize_t n, Py_ssize_t *begin, Py_ssize_t *start,
                    Py_ssize_t *end) {
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
        return -1;
    *begin = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 0));
    *start = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
    *end = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 2));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return (0 <= *begin && *begin < *start && *start <= *end && *end <= n) ? 0 : -1;
}

/* The document {$exists: flag}. */
static int put_exists(Buf *b, int flag) {
    Py_ssize_t at = doc_begin(b);
    if (at < 0 || put_header(b, 0x08, "$exists", 7) < 0 || put_byte(b, flag ? 1 : 0) < 0)
        return -1;
    return doc_end(b, at);
}

/* The condition {$eq: [ "$name", {$literal: value} ]} (an element of $and's array, or $expr's
 * own value), value being `kind` and `len` bytes at `value`. */
static int put_equal(Buf *b, const char *name, Py_ssize_t n, unsigned char kind,
                     const unsigned char *value, Py_ssize_t len) {
    Py_ssize_t cond = doc_begin(b);
    if (cond < 0 || put_header(b, 0x04, "$eq", 3) < 0)
        return -1;
    Py_ssize_t array = doc_begin(b);
    if (array < 0 || put_header(b, 0x02, "0", 1) < 0 || put_i32(b, n + 2) < 0 ||
        put_byte(b, '$') < 0 || put(b, name, n) < 0 || put_byte(b, 0) < 0 ||
        put_header(b, 0x03, "1", 1) < 0)
        return -1;
    Py_ssize_t literal = doc_begin(b);
    if (literal < 0 || put_header(b, kind, "$literal", 8) < 0 || put(b, value, len) < 0 ||
        doc_end(b, literal) < 0 || doc_end(b, array) < 0)
        return -1;
    return doc_end(b, cond);
}

PyDoc_STRVAR(guard_doc,
"guard(data: bytes, index: dict, fields: Iterable[str]) -> tuple[bytes, frozenset[str]] | None\n\n"
"rawdoc.raw_guard for a document whose ``index`` (from scan) is complete: the guard's BSON\n"
"and its top-level names; None where raw_guard must decide (a field name a query reads as a\n"
"path or an operator, no _id, a name that is no string).");

static PyObject *guard(PyObject *self, PyObject *args) {
    PyObject *data, *index, *fields;
    if (!PyArg_ParseTuple(args, "O!O!O:guard", &PyBytes_Type, &data, &PyDict_Type, &index,
                          &fields))
        return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *result = NULL, *names = NULL, *sorted = NULL, *frozen = NULL;
    Buf out = {0}, equal = {0};
    Py_ssize_t equals = 0, first_begin = 0, first_end = 0, begin, start, end;

    PyObject *id = PyDict_GetItemString(index, "_id");
    if (id == NULL || entry_of(id, n, &begin, &start, &end) < 0)
        goto fallback;
    sorted = PySequence_List(fields);
    if (sorted == NULL)
        goto error;
    if (PyList_Sort(sorted) < 0) {
        PyErr_Clear();  /* names that do not sort (not all strings): raw_guard says why */
        goto fallback;
    }
    names = PyList_New(0);
    if (names == NULL)
        goto error;
    if (put_i32(&out, 0) < 0 || put(&out, d + begin, end - begin) < 0)
        goto error;
    if (append_name(names, "_id") < 0)
        goto error;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sorted); i++) {
        PyObject *name = PyList_GET_ITEM(sorted, i);
        Py_ssize_t len;
        const char *text = name_text(name, &len);
        if (text == NULL)
            goto fallback;
        if (len == 3 && memcmp(text, "_id", 3) == 0)
            continue;
        if (len == 0 || text[0] == '$' || memchr(text, '.', (size_t)len) != NULL)
            goto fallback;  /* pinned through $getField, by raw_guard */
        if (PyList_Append(names, name) < 0)
            goto error;
        PyObject *entry = PyDict_GetItemWithError(index, name);
        if (entry == NULL) {
            if (PyErr_Occurred())
                goto error;
            /* {name: {$exists: false}} */
            if (put_header(&out, 0x03, text, len) < 0 || put_exists(&out, 0) < 0)
                goto error;
            continue;
        }
        if (entry_of(entry, n, &begin, &start, &end) < 0)
            goto fallback;
        unsigned char kind = d[begin];
        int plain = kind == 0x02 || kind == 0x08 || kind == 0x07;
        if (kind == 0x09 && end - start == 8) {
            int64_t ms = read_i64(d + start);
            plain = DATE_MIN <= ms && ms <= DATE_MAX;
        }
        if (plain) {
            /* {name: {$eq: value, $not: {$type: "array"}}} */
            if (put_header(&out, 0x03, text, len) < 0)
                goto error;
            Py_ssize_t cond = doc_begin(&out);
            if (cond < 0 || put_header(&out, kind, "$eq", 3) < 0 ||
                put(&out, d + start, end - start) < 0 || put_header(&out, 0x03, "$not", 4) < 0)
                goto error;
            Py_ssize_t not_at = doc_begin(&out);
            if (not_at < 0 || put_header(&out, 0x02, "$type", 5) < 0 ||
                put_string_value(&out, "array", 5) < 0 || doc_end(&out, not_at) < 0 ||
                doc_end(&out, cond) < 0)
                goto error;
            continue;
        }
        /* {name: {$exists: true}}, and its exact value pinned in $expr */
        if (put_header(&out, 0x03, text, len) < 0 || put_exists(&out, 1) < 0)
            goto error;
        char key[24];
        int keylen = snprintf(key, sizeof key, "%zd", equals);
        if (put_header(&equal, 0x03, key, keylen) < 0)
            goto error;
        if (equals == 0)
            first_begin = equal.len;
        if (put_equal(&equal, text, len, kind, d + start, end - start) < 0)
            goto error;
        if (equals == 0)
            first_end = equal.len;
        equals++;
    }
    if (equals) {
        if (append_name(names, "$expr") < 0 || put_header(&out, 0x03, "$expr", 5) < 0)
            goto error;
        if (equals == 1) {
            if (put(&out, equal.data + first_begin, first_end - first_begin) < 0)
                goto error;
        } else {
            /* {$and: [condition, ...]} */
            Py_ssize_t and_at = doc_begin(&out);
            if (and_at < 0 || put_header(&out, 0x04, "$and", 4) < 0)
                goto error;
            Py_ssize_t array = doc_begin(&out);
            if (array < 0 || put(&out, equal.data, equal.len) < 0 || doc_end(&out, array) < 0 ||
                doc_end(&out, and_at) < 0)
                goto error;
        }
    }
    if (doc_end(&out, 0) < 0)
        goto error;
    frozen = PyFrozenSet_New(names);
    if (frozen == NULL)
        goto error;
    result = Py_BuildValue("(y#O)", out.data, out.len, frozen);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(frozen);
    Py_XDECREF(names);
    Py_XDECREF(sorted);
    PyMem_Free(out.data);
    PyMem_Free(equal.data);
    return result;
}

/* ---- update -------------------------------------------------------------------------------- */

/* The element `name: value` as bson.encode with CODEC_OPTIONS writes it, for the types written
 * here: 1 when written, 0 for a value of another type (or a string BSON cannot hold), -1 on an
 * error. */
static int put_value_element(Buf *b, const char *name, Py_ssize_t n, PyObject *value) {
    if (PyUnicode_CheckExact(value)) {
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(value, &len);
        if (text == NULL) {  /* a lone surrogate: bson.encode says why it cannot */
            PyErr_Clear();
            return 0;
        }
        if (put_header(b, 0x02, name, n) < 0 || put_string_value(b, text, len) < 0)
            return -1;
        return 1;
    }
    if (PyBool_Check(value)) {
        if (put_header(b, 0x08, name, n) < 0 || put_byte(b, value == Py_True) < 0)
            return -1;
        return 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (overflow)
            return 0;  /* over 64 bits: bson.encode says why it cannot */
        if (v >= INT32_MIN && v <= INT32_MAX)
            return put_header(b, 0x10, name, n) < 0 || put_i32(b, v) < 0 ? -1 : 1;
        return put_header(b, 0x12, name, n) < 0 || put_i64(b, v) < 0 ? -1 : 1;
    }
    if (PyFloat_CheckExact(value)) {
        if (put_header(b, 0x01, name, n) < 0 || buf_reserve(b, 8) < 0)
            return -1;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), b->data + b->len, 1) < 0)
            return -1;
        b->len += 8;
        return 1;
    }
    if (value == Py_None)
        return put_header(b, 0x0A, name, n) < 0 ? -1 : 1;
    return 0;
}

PyDoc_STRVAR(update_doc,
"update(data: bytes, index: dict, patch: dict, unset: object)\n"
"    -> tuple[dict, tuple[str, ...], bytes] | None\n\n"
"What patch._update_of makes of a checked ``patch`` on a document whose ``index`` (from\n"
"scan) is complete: the values that would change it, the names it would remove (``unset``\n"
"marks them), and the update document ``{$set: ..., $unset: ...}`` (empty bytes when nothing\n"
"would change). A value is unchanged when its element is the stored one. None where\n"
"_update_of must decide: a value of a type other than str, int, bool, float and None, a\n"
"name or string BSON cannot hold.");

static PyObject *update(PyObject *self, PyObject *args) {
    PyObject *data, *index, *patch, *marker;
    if (!PyArg_ParseTuple(args, "O!O!O!O:update", &PyBytes_Type, &data, &PyDict_Type, &index,
                          &PyDict_Type, &patch, &marker))
        return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t n = PyBytes_GET_SIZE(data);
    PyObject *result = NULL, *to_set = NULL, *unset = NULL, *unset_tuple = NULL;
    Buf sets = {0}, out = {0};
    Py_ssize_t pos = 0, begin, start, end;
    PyObject *name, *value;

    to_set = PyDict_New();
    unset = PyList_New(0);
    if (to_set == NULL || unset == NULL)
        goto error;
    while (PyDict_Next(patch, &pos, &name, &value)) {
        Py_ssize_t len;
        const char *text = name_text(name, &len);
        if (text == NULL || (len == 3 && memcmp(text, "_id", 3) == 0))
            goto fallback;
        PyObject *entry = PyDict_GetItemWithError(index, name);
        if (entry == NULL && PyErr_Occurred())
            goto error;
        if (value == marker) {
            if (entry != NULL && PyList_Append(unset, name) < 0)
                goto error;
            continue;
        }
        Py_ssize_t at = sets.len;
        int written = put_value_element(&sets, text, len, value);
        if (written < 0)
            goto error;
        if (written == 0)
            goto fallback;
        if (entry != NULL) {
            if (entry_of(entry, n, &begin, &start, &end) < 0)
                goto fallback;
            if (end - begin == sets.len - at && memcmp(d + begin, sets.data + at,
                                                       (size_t)(end - begin)) == 0) {
                sets.len = at;  /* the stored element: nothing to change */
                continue;
            }
        }
        if (PyDict_SetItem(to_set, name, value) < 0)
            goto error;
    }
    unset_tuple = PyList_AsTuple(unset);
    if (unset_tuple == NULL)
        goto error;
    if (sets.len || PyTuple_GET_SIZE(unset_tuple)) {
        Py_ssize_t top = doc_begin(&out);
        if (top < 0)
            goto error;
        if (sets.len) {
            Py_ssize_t set;
            if (put_header(&out, 0x03, "$set", 4) < 0 || (set = doc_begin(&out)) < 0 ||
                put(&out, sets.data, sets.len) < 0 || doc_end(&out, set) < 0)
                goto error;
        }
        if (PyTuple_GET_SIZE(unset_tuple)) {
            Py_ssize_t names;
            if (put_header(&out, 0x03, "$unset", 6) < 0 || (names = doc_begin(&out)) < 0)
                goto error;
            for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(unset_tuple); i++) {
                Py_ssize_t len;
                const char *text = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(unset_tuple, i),
                                                           &len);
                if (text == NULL || put_header(&out, 0x02, text, len) < 0 ||
                    put_string_value(&out, "", 0) < 0)
                    goto error;
            }
            if (doc_end(&out, names) < 0)
                goto error;
        }
        if (doc_end(&out, top) < 0)
            goto error;
    }
    result = Py_BuildValue("(OOy#)", to_set, unset_tuple, out.data ? out.data : "", out.len);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    Py_XDECREF(to_set);
    Py_XDECREF(unset);
    Py_XDECREF(unset_tuple);
    PyMem_Free(sets.data);
    PyMem_Free(out.data);
    return result;
}

/* ---- the module ---------------------------------------------------------------------------- */

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, scan_doc},
    {"guard", guard, METH_VARARGS, guard_doc},
    {"update", update, METH_VARARGS, update_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rawbson",
    "The raw-BSON hot path, compiled; the Python code in rawdoc and patch is its reference.",
    0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rawbson(void) { return PyModuleDef_Init(&module); }
