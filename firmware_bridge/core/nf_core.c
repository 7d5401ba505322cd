/* The protocol core: HELLO, BEGIN/CHUNK/COMMIT/ACTIVATE into the persistent two-slot store,
 * STATUS, the reply cache, and dispatch of target commands. API: nf_core.h; layouts:
 * docs/protocol.md; slot layout and write order: nf_store.h.
 *
 * Safety rules kept here:
 *  - the store never erases or programs the slot the target runs (the active slot);
 *  - flash is written only when the target's may_write_flash hook allows it (motors stopped);
 *  - COMMIT checks the blob in flash (transfer CRC, nanofly_model_init, dimensions, format)
 *    before it programs the slot header, and every programmed range is read back;
 *  - ACTIVATE checks the flash copy again, programs the activation mark, and only then tells
 *    the target to switch. */
#include "nf_core.h"

#include <string.h>

#define CORE_CACHEABLE ((1u << NF_CMD_BEGIN) | (1u << NF_CMD_CHUNK) | (1u << NF_CMD_COMMIT) | \
                        (1u << NF_CMD_ACTIVATE))
#define HELLO_BYTES 52u
#define STATUS_BYTES 100u

#if NF_CORE_REPLY_MAX < STATUS_BYTES
#error "NF_CORE_REPLY_MAX must hold the STATUS reply (100 bytes)"
#endif

static const uint8_t *slot_base(const nf_core *c, unsigned slot) {
    return c->target->flash->read_base(c->target->flash->ctx, slot);
}

static uint32_t max_model_bytes(const nf_core *c) {
    uint32_t slot = c->target->flash->slot_bytes;
    return slot > NF_SLOT_HEADER_BYTES ? slot - NF_SLOT_HEADER_BYTES : 0;
}

static void send_frame(nf_core *c, uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length) {
    size_t n = nf_frame_encode(type, seq, payload, length, c->tx_buf, sizeof c->tx_buf);
    if (n && c->target->write) c->target->write(c->target->ctx, c->tx_buf, n);
}

static int cacheable(const nf_core *c, uint8_t type) {
    return type < 32 && ((CORE_CACHEABLE | c->target->cacheable_commands) >> type & 1u);
}

static void reply(nf_core *c, const nf_frame *req, uint8_t type, const uint8_t *payload, uint16_t length) {
    /* reply_buf stays untouched until the next frame, and any frame other than the repeat
     * forgets the cache, so a reply in reply_buf is kept by reference. */
    if (cacheable(c, req->type) && (length <= NF_CORE_CACHE_MAX || payload == c->reply_buf)) {
        c->cache.type = req->type;
        c->cache.seq = req->seq;
        c->cache.request_crc = req->crc;
        c->cache.reply_type = type;
        c->cache.length = length;
        c->cache.in_reply_buf = payload == c->reply_buf;
        if (!c->cache.in_reply_buf) memcpy(c->cache.payload, payload, length);
        __asm volatile("" ::: "memory"); /* the entry is whole before it is marked valid */
        c->cache.valid = 1;
    }
    send_frame(c, type, req->seq, payload, length);
}

uint8_t *nf_core_reply_buf(nf_core *c) { return c->reply_buf; }

void nf_core_reply_ok(nf_core *c, const nf_frame *req, uint16_t length) {
    if (length > NF_CORE_REPLY_MAX) length = NF_CORE_REPLY_MAX; /* a target bug: never overrun */
    reply(c, req, (uint8_t)(req->type | NF_REPLY_FLAG), c->reply_buf, length);
}

void nf_core_reply_error(nf_core *c, const nf_frame *req, uint8_t code, int32_t detail0, int32_t detail1) {
    uint8_t p[12] = {req->type, code, 0, 0};
    nf_put_u32(p + 4, (uint32_t)detail0);
    nf_put_u32(p + 8, (uint32_t)detail1);
    c->errors_sent++;
    reply(c, req, NF_REPLY_ERROR, p, sizeof p);
}

void nf_core_forget_cached(nf_core *c, uint8_t type) {
    if (c->cache.type == type) c->cache.valid = 0;
}

static int check_length(nf_core *c, const nf_frame *req, uint16_t expected) {
    if (req->length == expected) return 1;
    nf_core_reply_error(c, req, NF_ERR_LENGTH, req->length, expected);
    return 0;
}

static void describe(const nf_core *c, nf_target_state *st) {
    memset(st, 0, sizeof *st);
    st->ms_since_heartbeat = 0xFFFFFFFFu;
    if (c->target->describe) c->target->describe(c->target->ctx, st);
}

/* ---- flash writes ------------------------------------------------------------------- */

/* 0 when flash may be written now; else replies BUSY and returns 1. */
static int refuse_busy(nf_core *c, const nf_frame *req) {
    int reason = c->target->may_write_flash ? c->target->may_write_flash(c->target->ctx) : 0;
    if (!reason) return 0;
    nf_core_reply_error(c, req, NF_ERR_BUSY, reason, 0);
    return 1;
}

/* Program and read back [offset, offset + len) of the staging slot; 0 or replies FLASH. */
static int program_checked(nf_core *c, const nf_frame *req, uint32_t offset, const uint8_t *data, uint32_t len) {
    const nf_flash_ops *f = c->target->flash;
    int rc = f->program(f->ctx, c->staging.slot, offset, data, len);
    if (rc == 0 && memcmp(slot_base(c, c->staging.slot) + offset, data, len) != 0) rc = -100;
    if (rc == 0) return 0;
    c->flash_errors++;
    c->staging.state = NF_STAGE_EMPTY; /* the slot holds unknown bytes: BEGIN erases it again */
    nf_core_reply_error(c, req, NF_ERR_FLASH, (int32_t)offset, rc);
    return 1;
}

/* ---- boot --------------------------------------------------------------------------- */

int nf_core_init(nf_core *c, const nf_target *t) {
    memset(c, 0, sizeof *c);
    c->target = t;
    nf_parser_init(&c->parser);
    c->active.slot = -1;

    nf_slot_header h[NF_STORE_SLOTS];
    nanofly_model m[NF_STORE_SLOTS];
    int kind[NF_STORE_SLOTS];
    for (unsigned s = 0; s < NF_STORE_SLOTS; s++)
        kind[s] = nf_store_scan_slot(t->flash, s, t->obs_dim, t->act_dim, &h[s], &m[s]);
    int best = -1, committed = -1;
    for (int s = 0; s < NF_STORE_SLOTS; s++) {
        if (kind[s] == NF_SLOT_ACTIVE && (best < 0 || h[s].sequence > h[best].sequence)) best = s;
        if (kind[s] == NF_SLOT_COMMITTED && (committed < 0 || h[s].sequence > h[committed].sequence))
            committed = s;
    }
    if (best >= 0) {
        c->active.slot = (int8_t)best;
        c->slot_model[best] = m[best];
        nf_active_model *a = &c->active.info;
        a->model = &c->slot_model[best];
        a->model_id = h[best].model_id;
        a->model_crc = h[best].model_crc;
        a->size = h[best].size;
        a->format = h[best].format;
        a->slot = (uint8_t)best;
        a->sequence = h[best].sequence;
    }
    /* Uploads go to the other slot. A newer committed (verified, not activated) model there
     * stays staged, so a reconnecting host can still ACTIVATE it. */
    c->staging.slot = best >= 0 ? (uint8_t)(1 - best) : (committed >= 0 ? (uint8_t)committed : 0);
    if (committed >= 0 && committed == c->staging.slot &&
        (best < 0 || h[committed].sequence > h[best].sequence)) {
        c->staging.state = NF_STAGE_VERIFIED;
        c->staging.format = h[committed].format;
        c->staging.size = c->staging.received = h[committed].size;
        c->staging.crc = h[committed].model_crc;
        c->staging.model_id = h[committed].model_id;
        c->staging.sequence = h[committed].sequence;
        c->staging.model = m[committed];
    }
    if (t->activate) t->activate(t->ctx, best >= 0 ? &c->active.info : NULL);
    return best;
}

/* ---- commands ----------------------------------------------------------------------- */

typedef struct {
    uint8_t format;
    uint32_t id, crc, size;
} active_model_t;

/* The target's state and the model it runs: the active slot, else the target's compiled-in
 * default (all zero when it has none). HELLO and STATUS report both. */
static active_model_t describe_active(const nf_core *c, nf_target_state *st) {
    describe(c, st);
    active_model_t m;
    if (c->active.slot >= 0) {
        m.format = c->active.info.format;
        m.id = c->active.info.model_id;
        m.crc = c->active.info.model_crc;
        m.size = c->active.info.size;
    } else {
        m.format = st->default_format;
        m.id = st->default_format ? st->default_model_id : 0;
        m.crc = st->default_format ? st->default_model_crc : 0;
        m.size = st->default_format ? st->default_size : 0;
    }
    return m;
}

static void cmd_hello(nf_core *c, const nf_frame *req) {
    if (!check_length(c, req, 4)) return;
    uint16_t host_version = nf_get_u16(req->payload);
    uint16_t host_max = nf_get_u16(req->payload + 2);
    if (host_version != NF_PROTOCOL_VERSION) {
        nf_core_reply_error(c, req, NF_ERR_PROTOCOL, host_version, NF_PROTOCOL_VERSION);
        return;
    }
    nf_target_state st;
    const active_model_t active = describe_active(c, &st);
    uint8_t *p = c->reply_buf;
    memset(p, 0, HELLO_BYTES);
    nf_put_u16(p + 0, NF_PROTOCOL_VERSION);
    p[2] = NF_FW_VERSION_MAJOR;
    p[3] = NF_FW_VERSION_MINOR;
    p[4] = NF_FW_VERSION_PATCH;
    p[5] = st.cost_counter_kind;
    nf_put_u16(p + 6, host_max < NF_MAX_PAYLOAD ? host_max : NF_MAX_PAYLOAD);
    nf_put_u32(p + 8, max_model_bytes(c));
    p[12] = c->target->formats;
    p[13] = (uint8_t)((st.armed ? 1u : 0u) | (st.clock_flags & 3u) << 1);
    nf_put_u16(p + 14, c->target->obs_dim);
    nf_put_u16(p + 16, c->target->act_dim);
    nf_put_u16(p + 18, st.heartbeat_timeout_ms);
    nf_put_u16(p + 20, st.control_rate_hz);
    p[22] = active.format;
    nf_put_u32(p + 24, active.id);
    nf_put_u32(p + 28, active.crc);
    nf_put_u32(p + 32, active.size);
    nf_put_u32(p + 36, st.sysclk_hz);
    nf_put_u16(p + 40, NF_MAX_PAYLOAD);
    nf_put_u16(p + 42, NF_MIN_PAYLOAD);
    nf_put_u16(p + 44, st.state_dim);
    nf_put_u16(p + 46, st.history_len);
    nf_put_u16(p + 48, st.max_histories);
    nf_put_u16(p + 50, st.max_state_rows);
    nf_core_reply_ok(c, req, HELLO_BYTES);
}

static void begin_reply(nf_core *c, const nf_frame *req) {
    nf_put_u32(c->reply_buf, c->staging.received);
    c->reply_buf[4] = c->staging.state;
    c->reply_buf[5] = c->reply_buf[6] = c->reply_buf[7] = 0;
    nf_core_reply_ok(c, req, 8);
}

static void cmd_begin(nf_core *c, const nf_frame *req) {
    if (!check_length(c, req, 16)) return;
    uint32_t size = nf_get_u32(req->payload);
    uint32_t crc = nf_get_u32(req->payload + 4);
    uint8_t format = req->payload[8];
    uint32_t model_id = nf_get_u32(req->payload + 12);
    if (format > 7 || !(c->target->formats & (1u << format))) {
        nf_core_reply_error(c, req, NF_ERR_FORMAT, format, c->target->formats);
        return;
    }
    if (size > max_model_bytes(c) || size < NF_MIN_MODEL_BYTES) {
        nf_core_reply_error(c, req, NF_ERR_SIZE, (int32_t)size, (int32_t)max_model_bytes(c));
        return;
    }
    /* The same upload again (a retry, or a host reconnecting): keep what already arrived so
     * it resumes. Anything else starts over in an erased slot. */
    if (c->staging.state != NF_STAGE_EMPTY && c->staging.size == size && c->staging.crc == crc &&
        c->staging.format == format && c->staging.model_id == model_id) {
        begin_reply(c, req);
        return;
    }
    if (refuse_busy(c, req)) return;
    c->staging.state = NF_STAGE_EMPTY;
    const nf_flash_ops *f = c->target->flash;
    int rc = f->erase_slot(f->ctx, c->staging.slot);
    if (rc != 0) {
        c->flash_errors++;
        nf_core_reply_error(c, req, NF_ERR_FLASH, 0, rc);
        return;
    }
    if (c->target->upload_started) c->target->upload_started(c->target->ctx);
    c->staging.state = NF_STAGE_RECEIVING;
    c->staging.size = size;
    c->staging.crc = crc;
    c->staging.format = format;
    c->staging.model_id = model_id;
    c->staging.received = 0;
    begin_reply(c, req);
}

static void cmd_chunk(nf_core *c, const nf_frame *req) {
    if (req->length < 5) {
        nf_core_reply_error(c, req, NF_ERR_LENGTH, req->length, 5);
        return;
    }
    if (c->staging.state != NF_STAGE_RECEIVING) {
        nf_core_reply_error(c, req, NF_ERR_STATE, c->staging.state, NF_STAGE_RECEIVING);
        return;
    }
    uint32_t offset = nf_get_u32(req->payload);
    uint32_t n = (uint32_t)req->length - 4;
    uint32_t received = c->staging.received;
    /* Chunks may repeat or overlap but may not leave a gap. Bytes already in flash are not
     * programmed again (NOR cannot set bits); the COMMIT CRC covers what is there. */
    if (offset > received || offset > c->staging.size || n > c->staging.size - offset) {
        nf_core_reply_error(c, req, NF_ERR_OFFSET, (int32_t)offset, (int32_t)received);
        return;
    }
    if (offset + n > received) {
        if (refuse_busy(c, req)) return;
        uint32_t skip = received - offset;
        if (program_checked(c, req, NF_SLOT_HEADER_BYTES + received, req->payload + 4 + skip, n - skip))
            return;
        c->staging.received = offset + n;
    }
    nf_put_u32(c->reply_buf, c->staging.received);
    nf_core_reply_ok(c, req, 4);
}

static void commit_reply(nf_core *c, const nf_frame *req) {
    nf_put_u32(c->reply_buf, c->staging.crc);
    nf_put_u32(c->reply_buf + 4, c->staging.size);
    nf_put_u16(c->reply_buf + 8, (uint16_t)nanofly_model_input_dim(&c->staging.model));
    nf_put_u16(c->reply_buf + 10, (uint16_t)nanofly_model_output_dim(&c->staging.model));
    nf_core_reply_ok(c, req, 12);
}

/* Check the staged blob in flash: 0, or replies the error (CRC, MODEL, FORMAT, DIMS). */
static int verify_staged(nf_core *c, const nf_frame *req, nanofly_model *model) {
    const uint8_t *blob = slot_base(c, c->staging.slot) + NF_SLOT_HEADER_BYTES;
    uint32_t crc = nanofly_crc32(0, blob, c->staging.size - 4);
    if (crc != c->staging.crc) {
        nf_core_reply_error(c, req, NF_ERR_CRC, (int32_t)crc, (int32_t)c->staging.crc);
        return 1;
    }
    int rc = nanofly_model_init(model, blob, c->staging.size);
    if (rc != NANOFLY_OK) {
        nf_core_reply_error(c, req, NF_ERR_MODEL, rc, 0);
        return 1;
    }
    uint32_t in = nanofly_model_input_dim(model), out = nanofly_model_output_dim(model);
    if (nanofly_model_format(model) != c->staging.format) {
        nf_core_reply_error(c, req, NF_ERR_FORMAT, (int32_t)nanofly_model_format(model), c->staging.format);
        return 1;
    }
    if (in != c->target->obs_dim || out != c->target->act_dim) {
        nf_core_reply_error(c, req, NF_ERR_DIMS, (int32_t)(in << 16 | out),
                            (int32_t)((uint32_t)c->target->obs_dim << 16 | c->target->act_dim));
        return 1;
    }
    return 0;
}

static void cmd_commit(nf_core *c, const nf_frame *req) {
    if (!check_length(c, req, 0)) return;
    if (c->staging.state == NF_STAGE_VERIFIED) {
        commit_reply(c, req);
        return;
    }
    if (c->staging.state != NF_STAGE_RECEIVING) {
        nf_core_reply_error(c, req, NF_ERR_STATE, c->staging.state, NF_STAGE_RECEIVING);
        return;
    }
    if (c->staging.received != c->staging.size) {
        nf_core_reply_error(c, req, NF_ERR_INCOMPLETE, (int32_t)c->staging.received, (int32_t)c->staging.size);
        return;
    }
    if (verify_staged(c, req, &c->staging.model)) {
        c->staging.state = NF_STAGE_EMPTY;
        return;
    }
    if (refuse_busy(c, req)) return; /* still RECEIVING: COMMIT again once allowed */
    /* The header goes in last: until it is whole, the slot does not count. */
    nf_slot_header h = {0};
    h.sequence = 1;
    for (unsigned s = 0; s < NF_STORE_SLOTS; s++) {
        nf_slot_header other;
        if (s != c->staging.slot && nf_slot_header_decode(slot_base(c, s), &other) &&
            other.sequence >= h.sequence)
            h.sequence = other.sequence + 1;
    }
    h.size = c->staging.size;
    h.model_crc = c->staging.crc;
    h.format = c->staging.format;
    h.model_id = c->staging.model_id;
    uint8_t raw[NF_SLOT_HEADER_BYTES];
    nf_slot_header_encode(&h, raw);
    if (program_checked(c, req, 0, raw, NF_SLOT_MARK_OFFSET)) return;
    c->staging.sequence = h.sequence;
    c->staging.state = NF_STAGE_VERIFIED;
    commit_reply(c, req);
}

static void cmd_activate(nf_core *c, const nf_frame *req) {
    if (!check_length(c, req, 4)) return;
    uint32_t expected_crc = nf_get_u32(req->payload);
    if (refuse_busy(c, req)) return;
    if (c->staging.state != NF_STAGE_VERIFIED) {
        nf_core_reply_error(c, req, NF_ERR_NOT_VERIFIED, c->staging.state, NF_STAGE_VERIFIED);
        return;
    }
    if (c->staging.crc != expected_crc) {
        nf_core_reply_error(c, req, NF_ERR_MISMATCH, (int32_t)c->staging.crc, (int32_t)expected_crc);
        return;
    }
    /* Belt and braces: the flash copy is checked again right before it becomes active. */
    nanofly_model model;
    if (verify_staged(c, req, &model)) {
        c->staging.state = NF_STAGE_EMPTY;
        return;
    }
    uint8_t mark[4];
    nf_put_u32(mark, NF_SLOT_ACTIVATED);
    if (program_checked(c, req, NF_SLOT_MARK_OFFSET, mark, sizeof mark)) return;
    uint8_t slot = c->staging.slot;
    c->slot_model[slot] = model; /* the staging slot's entry: not the one running */
    c->active.slot = (int8_t)slot;
    nf_active_model *a = &c->active.info;
    a->model = &c->slot_model[slot];
    a->model_id = c->staging.model_id;
    a->model_crc = c->staging.crc;
    a->size = c->staging.size;
    a->format = c->staging.format;
    a->slot = slot;
    a->sequence = c->staging.sequence;
    if (c->target->activate) c->target->activate(c->target->ctx, a);
    c->staging.slot = (uint8_t)(1 - slot); /* the previous model's slot takes the next upload */
    c->staging.state = NF_STAGE_EMPTY;
    c->staging.received = 0;
    nf_put_u32(c->reply_buf, a->model_id);
    nf_put_u32(c->reply_buf + 4, a->model_crc);
    nf_put_u32(c->reply_buf + 8, a->size);
    nf_core_reply_ok(c, req, 12);
}

static void cmd_status(nf_core *c, const nf_frame *req) {
    if (!check_length(c, req, 0)) return;
    nf_target_state st;
    const active_model_t active = describe_active(c, &st);
    uint8_t *p = c->reply_buf;
    memset(p, 0, STATUS_BYTES);
    nf_put_u32(p + 0, st.uptime_ms);
    p[4] = st.armed;
    p[5] = st.failsafe_tripped;
    p[6] = c->staging.state;
    p[7] = active.format;
    nf_put_u32(p + 8, st.ms_since_heartbeat);
    nf_put_u32(p + 12, st.last_heartbeat_ms);
    nf_put_u32(p + 16, st.failsafe_trip_ms);
    memcpy(p + 20, st.motors, sizeof st.motors);
    nf_put_u32(p + 36, active.id);
    nf_put_u32(p + 40, active.crc);
    nf_put_u32(p + 44, active.size);
    nf_put_u32(p + 48, c->staging.size);
    nf_put_u32(p + 52, c->staging.crc);
    nf_put_u32(p + 56, c->staging.received);
    nf_put_u32(p + 60, c->parser.frames_ok);
    nf_put_u32(p + 64, c->parser.frames_bad);
    nf_put_u32(p + 68, c->parser.frames_too_long);
    nf_put_u32(p + 72, c->rx_overflows);
    nf_put_u32(p + 76, c->errors_sent);
    nf_put_u32(p + 80, st.inferences);
    nf_put_u32(p + 84, st.last_infer_ticks);
    nf_put_u32(p + 88, st.control_ticks);
    nf_put_u32(p + 92, st.failsafe_trips);
    nf_put_u32(p + 96, c->repeats_answered);
    nf_core_reply_ok(c, req, STATUS_BYTES);
}

void nf_core_handle_frame(nf_core *c, const nf_frame *req) {
    /* Only the frame right after the cached one can be its repeat (the host waits for each
     * reply before it sends the next request), so any other frame forgets the cache: a seq
     * number that wrapped around can never be mistaken for a retry. */
    if (c->cache.valid && req->type == c->cache.type && req->seq == c->cache.seq &&
        req->crc == c->cache.request_crc) {
        c->repeats_answered++;
        send_frame(c, c->cache.reply_type, req->seq,
                   c->cache.in_reply_buf ? c->reply_buf : c->cache.payload, c->cache.length);
        return;
    }
    c->cache.valid = 0;
    switch (req->type) {
    case NF_CMD_HELLO: cmd_hello(c, req); return;
    case NF_CMD_BEGIN: cmd_begin(c, req); return;
    case NF_CMD_CHUNK: cmd_chunk(c, req); return;
    case NF_CMD_COMMIT: cmd_commit(c, req); return;
    case NF_CMD_ACTIVATE: cmd_activate(c, req); return;
    case NF_CMD_STATUS: cmd_status(c, req); return;
    default: break;
    }
    if (c->target->command && c->target->command(c->target->ctx, c, req)) return;
    nf_core_reply_error(c, req, NF_ERR_UNKNOWN_COMMAND, req->type, 0);
}

void nf_core_feed(nf_core *c, const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        nf_frame frame;
        if (nf_parser_push(&c->parser, data[i], &frame)) nf_core_handle_frame(c, &frame);
    }
}

const nf_active_model *nf_core_active(const nf_core *c) { return c->active.slot >= 0 ? &c->active.info : NULL; }
uint8_t nf_core_staging_state(const nf_core *c) { return c->staging.state; }
const nf_parser *nf_core_parser(const nf_core *c) { return &c->parser; }
void nf_core_set_rx_overflows(nf_core *c, uint32_t total) { c->rx_overflows = total; }

int nf_core_self_check(const nf_core *c) {
    if (c->active.slot < 0) return 0;
    const uint8_t *blob = slot_base(c, (unsigned)c->active.slot) + NF_SLOT_HEADER_BYTES;
    if (nanofly_crc32(0, blob, c->active.info.size - 4) != c->active.info.model_crc) return 1;
    nf_slot_header h;
    if (!nf_slot_header_decode(slot_base(c, (unsigned)c->active.slot), &h) || !h.activated ||
        h.model_crc != c->active.info.model_crc)
        return 3;
    return 0;
}
