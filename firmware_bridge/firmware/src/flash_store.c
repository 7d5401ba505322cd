/* The model store's flash on this board (nf_flash_ops for the protocol core).
 *
 * Silicon: sectors 10 and 11 of the STM32F405's flash (128 KB each at 0x080C0000 and
 * 0x080E0000; the linker script keeps the image below them), written through the flash
 * controller as RM0090 section 3.6 describes: unlock with the two KEYR keys, sector erase
 * (SER, SNB, STRT), programming with PG set (word writes at 32-bit parallelism, bytes at
 * 8-bit for an unaligned start or end), wait for BSY to clear, check the error flags, and
 * reset the data cache afterwards so no stale line of the old contents is read.
 *
 * While an erase or program runs, any read of the flash stalls the bus, so code and the
 * vector table in flash cannot run: the wait loop runs from SRAM (.ramfunc) with interrupts
 * masked and reloads the independent watchdog, which a 128 KB sector erase (1 to 2 s) would
 * otherwise outlast. The firmware writes flash only while disarmed (bridge.c), so the masked
 * SysTick (dead man's switch) has no motors to stop meanwhile; UART bytes that arrive are lost
 * and the host sends its request again.
 *
 * QEMU (netduinoplus2) models neither the flash controller (its registers read as zero and
 * ignore writes) nor writes to the flash array (read-only). There, the slots are SRAM with the
 * same NOR semantics (erase sets 0xFF, programming only clears bits): slot 0 in the 64 KB of
 * SRAM QEMU has beyond the real chip's 128 KB (0x20020000), slot 1 in the SRAM above .bss
 * (free on the real chip; the linker script checks it fits under the stack). The contents
 * last until QEMU exits (a restart of the firmware from its reset handler keeps them). The firmware tells the two apart by FLASH_CR: LOCK (bit 31) is set
 * at reset on the chip, and the emulator reads it as zero. */
#include "flash_store.h"

#include <string.h>

#include "bridge.h"
#include "stm32f405.h"

#define SLOT0_SECTOR 10u
#define SLOT1_SECTOR 11u
#define SLOT0_FLASH_ADDR 0x080C0000u
#define SLOT1_FLASH_ADDR 0x080E0000u
#define SECTOR_BYTES (128u * 1024u)
#define EMULATED_SLOT0_ADDR 0x20020000u /* QEMU's SRAM beyond the chip's 128 KB */

#if NF_SLOT_BYTES > SECTOR_BYTES
#error "a model slot must fit one 128 KB flash sector"
#endif

extern uint8_t _emu_nor_slot1[]; /* linker script: SRAM above .bss */

#define FLASH_KEY1 0x45670123u
#define FLASH_KEY2 0xCDEF89ABu
#define FLASH_SR_BSY (1u << 16)
#define FLASH_SR_ERRORS 0xF2u     /* OPERR, WRPERR, PGAERR, PGPERR, PGSERR */
#define FLASH_CR_PG (1u << 0)
#define FLASH_CR_SER (1u << 1)
#define FLASH_CR_SNB_SHIFT 3
#define FLASH_CR_PSIZE_X8 (0u << 8)
#define FLASH_CR_PSIZE_X32 (2u << 8)
#define FLASH_CR_STRT (1u << 16)
#define FLASH_CR_LOCK (1u << 31)
#define FLASH_ACR_DCEN (1u << 10)
#define FLASH_ACR_DCRST (1u << 12)
/* Wait-loop passes before giving up (a bounded wait: a hung controller is an error, not a
 * hang). Each pass is a few cycles from SRAM; at 168 MHz this is far beyond the 2 s worst
 * case of a 128 KB sector erase (x32). */
#define FLASH_WAIT_PASSES 200000000u

#define ERR_TIMEOUT (-1)
#define ERR_FLAGS (-2)          /* detail: the SR error bits are in the upper half */
#define ERR_RANGE (-3)

static uint8_t emulated;

/* Start the operation already set up in FLASH_CR (STRT, or the write to program_at) and wait
 * until the controller is idle. Runs from SRAM with interrupts masked; reloads the watchdog
 * while waiting. Returns FLASH_SR's error bits, or 0xFFFFFFFF on timeout. */
__attribute__((section(".ramfunc"), noinline, long_call))
static uint32_t flash_run_from_ram(uint32_t cr_start_bits, volatile uint32_t *program_at, uint32_t word,
                                   volatile uint8_t *program_byte_at, uint8_t byte) {
    uint32_t primask;
    __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
    if (cr_start_bits) FLASH_CR |= cr_start_bits;
    if (program_at) *program_at = word;
    if (program_byte_at) *program_byte_at = byte;
    __asm volatile("dsb" ::: "memory");
    uint32_t result = 0xFFFFFFFFu;
    for (uint32_t i = 0; i < FLASH_WAIT_PASSES; i++) {
        if (!(FLASH_SR & FLASH_SR_BSY)) {
            result = FLASH_SR & FLASH_SR_ERRORS;
            break;
        }
        IWDG_KR = IWDG_KEY_RELOAD;
    }
    __asm volatile("msr primask, %0" ::"r"(primask) : "memory");
    return result;
}

static int flash_unlock(void) {
    if (FLASH_CR & FLASH_CR_LOCK) {
        FLASH_KEYR = FLASH_KEY1;
        FLASH_KEYR = FLASH_KEY2;
    }
    return (FLASH_CR & FLASH_CR_LOCK) ? ERR_FLAGS : 0;
}

static int flash_result(uint32_t sr_errors) {
    FLASH_SR = FLASH_SR_ERRORS; /* write 1 to clear */
    if (sr_errors == 0xFFFFFFFFu) return ERR_TIMEOUT;
    if (sr_errors) return ERR_FLAGS - (int)(sr_errors << 8);
    return 0;
}

/* The flash data cache may hold lines read before an erase or program (the boot scan reads
 * the slot headers): reset it, which RM0090 allows only while it is disabled, so the store's
 * read-back sees the new contents. */
static void data_cache_reset(void) {
    uint32_t acr = FLASH_ACR;
    FLASH_ACR = acr & ~FLASH_ACR_DCEN;
    FLASH_ACR = (acr & ~FLASH_ACR_DCEN) | FLASH_ACR_DCRST;
    FLASH_ACR = acr & ~FLASH_ACR_DCRST;
}

static int silicon_erase(unsigned sector) {
    if (flash_unlock()) return ERR_FLAGS;
    FLASH_SR = FLASH_SR_ERRORS;
    FLASH_CR = FLASH_CR_SER | (sector << FLASH_CR_SNB_SHIFT) | FLASH_CR_PSIZE_X32;
    int rc = flash_result(flash_run_from_ram(FLASH_CR_STRT, NULL, 0, NULL, 0));
    FLASH_CR = FLASH_CR_LOCK; /* SER off, locked again */
    data_cache_reset();
    return rc;
}

static int silicon_program(uint32_t address, const uint8_t *data, uint32_t len) {
    if (flash_unlock()) return ERR_FLAGS;
    FLASH_SR = FLASH_SR_ERRORS;
    int rc = 0;
    uint32_t i = 0;
    while (rc == 0 && i < len) {
        uint32_t a = address + i;
        if ((a & 3u) == 0 && len - i >= 4) {
            uint32_t word;
            memcpy(&word, data + i, 4);
            FLASH_CR = FLASH_CR_PG | FLASH_CR_PSIZE_X32;
            rc = flash_result(flash_run_from_ram(0, (volatile uint32_t *)a, word, NULL, 0));
            i += 4;
        } else {
            FLASH_CR = FLASH_CR_PG | FLASH_CR_PSIZE_X8;
            rc = flash_result(flash_run_from_ram(0, NULL, 0, (volatile uint8_t *)a, data[i]));
            i += 1;
        }
    }
    FLASH_CR = FLASH_CR_LOCK;
    data_cache_reset();
    return rc;
}

static uint8_t *slot_address(unsigned slot) {
    if (emulated) return slot ? _emu_nor_slot1 : (uint8_t *)EMULATED_SLOT0_ADDR;
    return (uint8_t *)(slot ? SLOT1_FLASH_ADDR : SLOT0_FLASH_ADDR);
}

static int store_erase(void *ctx, unsigned slot) {
    (void)ctx;
    if (slot > 1) return ERR_RANGE;
    if (emulated) {
        memset(slot_address(slot), 0xFF, NF_SLOT_BYTES);
        return 0;
    }
    return silicon_erase(slot ? SLOT1_SECTOR : SLOT0_SECTOR);
}

static int store_program(void *ctx, unsigned slot, uint32_t offset, const uint8_t *data, uint32_t len) {
    (void)ctx;
    if (slot > 1 || offset > NF_SLOT_BYTES || len > NF_SLOT_BYTES - offset) return ERR_RANGE;
    uint8_t *dst = slot_address(slot) + offset;
    if (emulated) {
        for (uint32_t i = 0; i < len; i++) dst[i] &= data[i]; /* NOR: only clears bits */
        return 0;
    }
    return silicon_program((uint32_t)dst, data, len);
}

static const uint8_t *store_base(void *ctx, unsigned slot) {
    (void)ctx;
    return slot_address(slot & 1u);
}

static nf_flash_ops ops;

const nf_flash_ops *flash_store_init(void) {
    emulated = !(FLASH_CR & FLASH_CR_LOCK); /* locked out of reset on silicon; 0 under QEMU */
    ops.ctx = NULL;
    ops.slot_bytes = NF_SLOT_BYTES;
    ops.erase_slot = store_erase;
    ops.program = store_program;
    ops.read_base = store_base;
    /* Under QEMU the slots start as zeroed SRAM: to the store that is a slot without a valid
     * header (as if every bit were programmed), which BEGIN erases before use. Not erasing
     * here keeps the store across a restart of the firmware. */
    return &ops;
}

int flash_store_emulated(void) { return emulated; }
