/*
 * backchannel.protocol._speedups: the compiled hot path of the protocol core.
 *
 * Every function here has a pure-Python twin in backchannel.protocol.speedups (or the
 * module it names), which is what runs when this extension is missing or disabled; the
 * tests check that both give the same results for any input. This module holds no state
 * and does no I/O.
 *
 *   apply_mask(data, mask)         XOR with a 4-byte key (RFC 6455 section 5.3)
 *   utf8_feed(state, data)         one step of an incremental UTF-8 validator
 *   encode_frame(opcode, payload, fin, rsv1, mask)
 *   scan_frames(buf, pos, events, masked, limit, text_type, binary_type)
 *                                  decode a run of simple data frames (see below)
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* XOR n bytes of src with the key (repeated from its first byte) into dst. Eight bytes at
 * a time with memcpy, which compilers turn into plain loads and stores without alignment
 * or aliasing trouble. */
static void
mask_into(unsigned char *dst, const unsigned char *src, Py_ssize_t n, const unsigned char key[4])
{
    uint32_t k32;
    uint64_t k64;
    Py_ssize_t i = 0;

    memcpy(&k32, key, 4);
    k64 = ((uint64_t)k32 << 32) | k32;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= k64;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ key[i & 3];
    }
}

static PyObject *
apply_mask(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, mask;
    PyObject *result = NULL;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "apply_mask() takes exactly 2 arguments");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &mask, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (mask.len != 4) {
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL) {
        goto done;
    }
    mask_into((unsigned char *)PyBytes_AS_STRING(result), data.buf, data.len, mask.buf);
done:
    PyBuffer_Release(&mask);
    PyBuffer_Release(&data);
    return result;
}

/*
 * Incremental UTF-8 validation (RFC 3629 section 4; RFC 6455 section 8.1).
 *
 * The state is what the bytes so far still require:
 *   0  at a character boundary (the only state in which a message may end)
 *   1  one more continuation byte, 80..BF
 *   2  two more continuation bytes
 *   3  three more continuation bytes
 *   4  after E0: the next byte is A0..BF (shorter forms are overlong)
 *   5  after ED: the next byte is 80..9F (A0..BF would encode a UTF-16 surrogate)
 *   6  after F0: the next byte is 90..BF (overlong otherwise)
 *   7  after F4: the next byte is 80..8F (above U+10FFFF otherwise)
 *  -1  invalid: no continuation can make the bytes valid
 * Because every state names exactly the bytes that may follow, the first invalid byte is
 * found in the chunk that holds it, however the message is cut.
 */
enum { U_ACCEPT = 0, U_E0 = 4, U_ED = 5, U_F0 = 6, U_F4 = 7, U_REJECT = -1 };

static int
utf8_step(int state, const unsigned char *s, Py_ssize_t n)
{
    Py_ssize_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        if (state == U_ACCEPT) {
            /* ASCII runs are the common case: skip eight bytes at a time. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & UINT64_C(0x8080808080808080)) {
                    break;
                }
                i += 8;
            }
            if (i >= n) {
                break;
            }
            c = s[i];
            if (c < 0x80) {
                i++;
                continue;
            }
            /* A whole multi-byte character in the buffer, the common case: check it at
             * once (the same ranges as the states below). */
            if (c >= 0xC2 && c < 0xE0 && n - i >= 2) {
                if ((s[i + 1] & 0xC0) != 0x80) {
                    return U_REJECT;
                }
                i += 2;
                continue;
            }
            if (c >= 0xE0 && c < 0xF0 && n - i >= 3) {
                unsigned char c1 = s[i + 1];
                unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
                if (c1 < lo || c1 > hi || (s[i + 2] & 0xC0) != 0x80) {
                    return U_REJECT;
                }
                i += 3;
                continue;
            }
            if (c >= 0xF0 && c <= 0xF4 && n - i >= 4) {
                unsigned char c1 = s[i + 1];
                unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
                if (c1 < lo || c1 > hi || (s[i + 2] & 0xC0) != 0x80 ||
                    (s[i + 3] & 0xC0) != 0x80) {
                    return U_REJECT;
                }
                i += 4;
                continue;
            }
            /* Otherwise one byte at a time: a character cut by the end of the chunk, or
             * an invalid lead byte. */
            i++;
            if (c < 0xC2) {
                return U_REJECT; /* a continuation byte, or C0/C1 (overlong) */
            }
            if (c < 0xE0) {
                state = 1;
            } else if (c == 0xE0) {
                state = U_E0;
            } else if (c == 0xED) {
                state = U_ED;
            } else if (c < 0xF0) {
                state = 2;
            } else if (c == 0xF0) {
                state = U_F0;
            } else if (c < 0xF4) {
                state = 3;
            } else if (c == 0xF4) {
                state = U_F4;
            } else {
                return U_REJECT; /* F5..FF never appear in UTF-8 */
            }
            continue;
        }
        i++;
        switch (state) {
        case 1:
        case 2:
        case 3:
            if (c < 0x80 || c > 0xBF) {
                return U_REJECT;
            }
            state -= 1;
            break;
        case U_E0:
            if (c < 0xA0 || c > 0xBF) {
                return U_REJECT;
            }
            state = 1;
            break;
        case U_ED:
            if (c < 0x80 || c > 0x9F) {
                return U_REJECT;
            }
            state = 1;
            break;
        case U_F0:
            if (c < 0x90 || c > 0xBF) {
                return U_REJECT;
            }
            state = 2;
            break;
        case U_F4:
            if (c < 0x80 || c > 0x8F) {
                return U_REJECT;
            }
            state = 2;
            break;
        default:
            return U_REJECT;
        }
    }
    return state;
}

static PyObject *
utf8_feed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    long state;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "utf8_feed() takes exactly 2 arguments");
        return NULL;
    }
    state = PyLong_AsLong(args[0]);
    if (state == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (state < U_REJECT || state > U_F4) {
        PyErr_SetString(PyExc_ValueError, "invalid UTF-8 validator state");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (state != U_REJECT) {
        state = utf8_step((int)state, data.buf, data.len);
    }
    PyBuffer_Release(&data);
    return PyLong_FromLong(state);
}

/* Write a frame header (RFC 6455 section 5.2) into out; return its length. The length
 * uses the minimal encoding, as the section requires. */
static Py_ssize_t
write_header(unsigned char *out, int first, Py_ssize_t length, int masked)
{
    unsigned char mask_bit = masked ? 0x80 : 0;

    out[0] = (unsigned char)first;
    if (length < 126) {
        out[1] = mask_bit | (unsigned char)length;
        return 2;
    }
    if (length < 65536) {
        out[1] = mask_bit | 126;
        out[2] = (unsigned char)(length >> 8);
        out[3] = (unsigned char)length;
        return 4;
    }
    out[1] = mask_bit | 127;
    for (int i = 0; i < 8; i++) {
        out[2 + i] = (unsigned char)((uint64_t)length >> (56 - 8 * i));
    }
    return 10;
}

static PyObject *
encode_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int opcode, fin = 1, rsv1 = 0;
    Py_buffer payload, key = {0};
    PyObject *mask = Py_None, *result = NULL;
    unsigned char header[14];
    Py_ssize_t head_len, nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    int masked;

    /* encode_frame(opcode, payload, *, fin=True, rsv1=False, mask=None), parsed by hand:
     * the generic argument parser costs more than the rest of the call. */
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_frame() takes 2 positional arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *value = args[nargs + i];
        int flag;
        if (PyUnicode_CompareWithASCIIString(name, "mask") == 0) {
            mask = value;
            continue;
        }
        flag = PyObject_IsTrue(value);
        if (flag < 0) {
            return NULL;
        }
        if (PyUnicode_CompareWithASCIIString(name, "fin") == 0) {
            fin = flag;
        } else if (PyUnicode_CompareWithASCIIString(name, "rsv1") == 0) {
            rsv1 = flag;
        } else {
            PyErr_Format(PyExc_TypeError, "encode_frame() got an unexpected keyword %R", name);
            return NULL;
        }
    }
    opcode = PyLong_AsLong(args[0]);
    if (opcode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (opcode < 0 || opcode > 15) {
        PyErr_SetString(PyExc_ValueError, "opcode must be 0..15");
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    masked = mask != Py_None;
    if (masked) {
        if (PyObject_GetBuffer(mask, &key, PyBUF_SIMPLE) < 0) {
            goto done;
        }
        if (key.len != 4) {
            PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
            goto done;
        }
    }
    head_len = write_header(header, (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode,
                            payload.len, masked);
    if (masked) {
        memcpy(header + head_len, key.buf, 4);
        head_len += 4;
    }
    result = PyBytes_FromStringAndSize(NULL, head_len + payload.len);
    if (result == NULL) {
        goto done;
    }
    {
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        memcpy(out, header, head_len);
        if (masked) {
            mask_into(out + head_len, payload.buf, payload.len, key.buf);
        } else {
            memcpy(out + head_len, payload.buf, payload.len);
        }
    }
done:
    if (key.obj != NULL) {
        PyBuffer_Release(&key);
    }
    PyBuffer_Release(&payload);
    return result;
}

/*
 * scan_frames(buf, pos, events, masked, limit, text_type, binary_type) -> int
 *
 * Decode, from buf[pos:], a run of complete "simple" frames: FIN set, RSV bits clear,
 * opcode text or binary, masked exactly when `masked` is true, length minimally encoded
 * and at most `limit`, and, for text, valid UTF-8. For each, append text_type(str) or
 * binary_type(bytes) to the list `events`. Stop at the first frame that is anything else
 * (incomplete, a control frame, a fragment, compressed, invalid in any way) and return
 * the position of that frame: the caller's general parser takes it from there, so every
 * rule and every error message lives in one place, the pure-Python parser. The caller
 * calls this only when no fragmented message is in progress.
 */
static PyObject *
scan_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos, end;
    unsigned long long limit;
    int masked;
    PyObject *events, *text_type, *binary_type;
    const unsigned char *buf;

    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "scan_frames() takes exactly 7 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    events = args[2];
    if (!PyList_Check(events)) {
        PyErr_SetString(PyExc_TypeError, "events must be a list");
        return NULL;
    }
    masked = PyObject_IsTrue(args[3]);
    if (masked < 0) {
        return NULL;
    }
    limit = PyLong_AsUnsignedLongLong(args[4]);
    if (limit == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    text_type = args[5];
    binary_type = args[6];
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    buf = view.buf;
    end = view.len;
    if (pos < 0 || pos > end) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }

    while (end - pos >= 2) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        int opcode = b0 & 0x0F;
        uint64_t length = b1 & 0x7F;
        Py_ssize_t header = 2;
        const unsigned char *payload;
        PyObject *data, *event;

        /* FIN, no RSV bit, text or binary; the mask bit as the side requires. */
        if ((b0 & 0xF0) != 0x80 || (opcode != 1 && opcode != 2)) {
            break;
        }
        if (((b1 & 0x80) != 0) != masked) {
            break;
        }
        if (length == 126) {
            if (end - pos < 4) {
                break;
            }
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            if (length < 126) {
                break;
            }
            header = 4;
        } else if (length == 127) {
            if (end - pos < 10) {
                break;
            }
            length = 0;
            for (int i = 0; i < 8; i++) {
                length = (length << 8) | buf[pos + 2 + i];
            }
            if (length >> 63 || length < 65536) {
                break;
            }
            header = 10;
        }
        if (length > (uint64_t)limit) {
            break;
        }
        if (masked) {
            header += 4;
        }
        if (end - pos < header || (uint64_t)(end - pos - header) < length) {
            break;
        }
        payload = buf + pos + header;
        if (masked) {
            data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (data == NULL) {
                goto error;
            }
            mask_into((unsigned char *)PyBytes_AS_STRING(data), payload, (Py_ssize_t)length,
                      payload - 4);
            if (opcode == 1) {
                PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data),
                                                      (Py_ssize_t)length, "strict");
                Py_DECREF(data);
                data = text;
            }
        } else if (opcode == 1) {
            data = PyUnicode_DecodeUTF8((const char *)payload, (Py_ssize_t)length, "strict");
        } else {
            data = PyBytes_FromStringAndSize((const char *)payload, (Py_ssize_t)length);
        }
        if (data == NULL) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                /* Invalid UTF-8: the general parser fails the connection (1007). */
                PyErr_Clear();
                break;
            }
            goto error;
        }
        event = PyObject_CallOneArg(opcode == 1 ? text_type : binary_type, data);
        Py_DECREF(data);
        if (event == NULL) {
            goto error;
        }
        if (PyList_Append(events, event) < 0) {
            Py_DECREF(event);
            goto error;
        }
        Py_DECREF(event);
        pos += header + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(pos);
error:
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask, METH_FASTCALL,
     "apply_mask(data, mask) -> bytes: XOR data with the 4-byte mask repeated."},
    {"utf8_feed", (PyCFunction)(void (*)(void))utf8_feed, METH_FASTCALL,
     "utf8_feed(state, data) -> int: the validator state after data; -1 when invalid."},
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame, METH_FASTCALL | METH_KEYWORDS,
     "encode_frame(opcode, payload, *, fin=True, rsv1=False, mask=None) -> bytes"},
    {"scan_frames", (PyCFunction)(void (*)(void))scan_frames, METH_FASTCALL,
     "scan_frames(buf, pos, events, masked, limit, text_type, binary_type) -> int"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "backchannel.protocol._speedups",
    .m_doc = "Compiled hot path of the WebSocket protocol core.",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&module_def);
}
