/* nanofly bridge protocol: constants shared by the protocol core (firmware_bridge/core), every
 * target and (by a parity test) the Python client in nanofly/firmware_bridge/protocol.py. The wire format is in docs/protocol.md.
 *
 * A frame before COBS encoding:  type u8 | seq u8 | length u16 | payload[length] | crc32 u32
 * (little-endian; CRC-32 as zlib over type..payload). On the wire: 0x00, COBS(frame), 0x00.
 */
#ifndef NF_PROTOCOL_H
#define NF_PROTOCOL_H

#define NF_PROTOCOL_VERSION 1
#define NF_FW_VERSION_MAJOR 0
#define NF_FW_VERSION_MINOR 3
#define NF_FW_VERSION_PATCH 0

#define NF_FRAME_HEADER_BYTES 4   /* type, seq, length */
#define NF_FRAME_CRC_BYTES 4
#define NF_MAX_PAYLOAD 2048       /* largest payload the firmware accepts (HELLO negotiates) */
#define NF_MIN_PAYLOAD 640        /* INFER needs 4 * 146 + 4 = 588 bytes */
#define NF_MIN_MODEL_BYTES 24     /* smallest blob: header, widths, CRC */

/* The "model CRC" everywhere in the protocol (BEGIN, COMMIT, ACTIVATE, HELLO, STATUS, INFER)
 * is the CRC-32 of the blob without its last 4 bytes, i.e. the blob's own trailing CRC field.
 * (The CRC-32 of a whole blob, trailing CRC included, is the same constant 0x2144DF1C for
 * every valid blob, so it cannot tell models apart.) */

/* Requests (host -> MCU). A successful reply has type (request | NF_REPLY_FLAG). */
#define NF_CMD_HELLO 0x01
#define NF_CMD_BEGIN 0x02
#define NF_CMD_CHUNK 0x03
#define NF_CMD_COMMIT 0x04
#define NF_CMD_ACTIVATE 0x05
#define NF_CMD_INFER 0x06
#define NF_CMD_STATUS 0x07
#define NF_CMD_ARM 0x08
#define NF_CMD_DISARM 0x09
#define NF_CMD_HEARTBEAT 0x0A
#define NF_CMD_INFER_STATE 0x0B  /* compact INFER: state part only, history kept on board */
#define NF_REPLY_FLAG 0x80
#define NF_REPLY_ERROR 0xFF       /* payload: request type u8, code u8, 0 u16, detail0 i32, detail1 i32 */

/* Error codes carried by NF_REPLY_ERROR. */
#define NF_ERR_UNKNOWN_COMMAND 1  /* detail0 = the type */
#define NF_ERR_LENGTH 2           /* detail0 = payload length received, detail1 = expected */
#define NF_ERR_STATE 3            /* detail0 = staging state */
#define NF_ERR_SIZE 4             /* detail0 = model size, detail1 = max model bytes (min: NF_MIN_MODEL_BYTES) */
#define NF_ERR_FORMAT 5           /* detail0 = format asked for, detail1 = supported bitmask */
#define NF_ERR_OFFSET 6           /* detail0 = chunk offset, detail1 = bytes received so far */
#define NF_ERR_INCOMPLETE 7       /* detail0 = bytes received, detail1 = model size */
#define NF_ERR_CRC 8              /* detail0 = computed model CRC, detail1 = declared model CRC */
#define NF_ERR_MODEL 9            /* detail0 = nanofly_model_init code (NANOFLY_ERR_*) */
#define NF_ERR_DIMS 10            /* detail0 = (model in << 16 | out), detail1 = (fw in << 16 | out) */
#define NF_ERR_NO_MODEL 11        /* no active model */
#define NF_ERR_NOT_VERIFIED 12    /* ACTIVATE without a committed model; detail0 = staging state */
#define NF_ERR_ARMED 13           /* not allowed while armed */
#define NF_ERR_NONFINITE 14       /* observation has NaN/Inf; detail0 = index */
#define NF_ERR_PROTOCOL 15        /* detail0 = host protocol version, detail1 = ours */
#define NF_ERR_MISMATCH 16        /* ACTIVATE CRC differs from the verified model; detail0 = staged CRC */
#define NF_ERR_HISTORY 17         /* INFER_STATE: no on-board history; detail0 = env index, detail1 = NF_HIST_* */
#define NF_ERR_BUSY 18            /* flash may not be written now (motors armed/running); detail0 = NF_BUSY_* */
#define NF_ERR_FLASH 19           /* flash erase/program/read-back failed; detail0 = offset in slot, detail1 = driver code */

/* Why flash may not be written now (NF_ERR_BUSY detail0; the target's may_write_flash hook). */
#define NF_BUSY_ARMED 1           /* motors armed (the bridge firmware's ARM, the Crazyflie's arming) */
#define NF_BUSY_FLYING 2          /* motors running / in flight */
#define NF_BUSY_OTHER 3           /* another target-specific reason */

/* Why INFER_STATE found no on-board history (NF_ERR_HISTORY detail1). */
#define NF_HIST_RANGE 1           /* env index >= max histories (HELLO) */
#define NF_HIST_NOT_LOADED 2      /* no full INFER for this env since boot / the last upload */
#define NF_HIST_BUSY 3            /* an upload is in progress (BEGIN forgets the histories) */
#define NF_HIST_LAYOUT 4          /* the firmware's input has no state + action-history layout */
#define NF_HIST_DUPLICATE 5       /* the same env twice in one INFER_STATE frame */
#define NF_INFER_NO_ENV 0xFFFF    /* full INFER env index: store no history */

/* Staging slot states. */
#define NF_STAGE_EMPTY 0
#define NF_STAGE_RECEIVING 1
#define NF_STAGE_VERIFIED 2

/* Inference cost counter kinds (HELLO). */
#define NF_COUNTER_NONE 0
#define NF_COUNTER_DWT_CYCLES 1   /* real chip: DWT CYCCNT, CPU cycles */
#define NF_COUNTER_TIM5_TICKS 2   /* QEMU -icount shift=0: TIM5 counts one per instruction */

/* Dead man's switch and control loop. */
#define NF_HEARTBEAT_TIMEOUT_MS 200
#define NF_CONTROL_RATE_HZ 500     /* while armed */
#define NF_IDLE_TICK_MS 10         /* timer tick while disarmed */

#endif
