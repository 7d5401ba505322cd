/* STM32F405 flash operations for the nanofly model store (nanofly_cf_flash.h).
 *
 * Programming uses the firmware's own StdPeriph driver (stm32f4xx_flash.c, in every image):
 * a word program stalls the CPU for 16 us typical, 100 us at most. The sector erase does not:
 * FLASH_EraseSector busy-waits in flash, so the CPU stalls on its next instruction fetch for
 * the whole erase (1-2 s for 128 KiB) while the independent watchdog, reloaded only by the idle
 * task every 80 ms and set to about 188 ms (watchdog.c), resets the chip. The erase below is
 * started and waited for by a function that runs from RAM with interrupts off (an interrupt
 * would fetch its vector from flash and stall the same way), reloading the watchdog while the
 * flash is busy. Every erase and program re-checks, with interrupts off, that the Crazyflie is
 * disarmed and its motors are stopped: the PWM timers keep their last ratio while the CPU
 * stalls, and the stabilizer does not run. */
#include "nanofly_cf_flash.h"

#include <string.h>

#include "stm32fxxx.h"
#include "stm32f4xx_flash.h"

#include "motors.h"
#include "supervisor.h"

/* Not in the CMSIS header: the key that reloads the IWDG counter (RM0090, IWDG_KR). */
#define NF_IWDG_RELOAD_KEY 0xAAAAu
#define NF_FLASH_ERROR_FLAGS (FLASH_FLAG_OPERR | FLASH_FLAG_WRPERR | FLASH_FLAG_PGAERR | \
                              FLASH_FLAG_PGPERR | FLASH_FLAG_PGSERR)

bool nf_cf_flash_may_write(void)
{
    if (supervisorIsArmed()) {
        return false;
    }
    for (uint32_t m = 0; m < 4u; m++) {
        if (motorsGetRatio(m) != 0u) {
            return false;
        }
    }
    return true;
}

const uint8_t *nf_cf_flash_slot(uint32_t slot)
{
    return (const uint8_t *)(NF_CF_STORE_BASE + slot * NF_CF_STORE_SLOT_BYTES);
}

/* The ART accelerator's data cache may hold words of the old contents (RM0090 3.5.2: reset it
 * after an erase or program); it must be off while it is reset. */
static void flush_data_cache(void)
{
    const uint32_t enabled = FLASH->ACR & FLASH_ACR_DCEN;
    FLASH->ACR &= ~FLASH_ACR_DCEN;
    FLASH->ACR |= FLASH_ACR_DCRST;
    FLASH->ACR &= ~FLASH_ACR_DCRST;
    FLASH->ACR |= enabled;
}

/* Runs from RAM: the firmware's linker script puts .RAMtext into .data, which the startup copies
 * to RAM (long_call: RAM is out of a branch's reach from flash). No flash access from the start
 * of the erase to its end. */
__attribute__((section(".RAMtext"), noinline, long_call))
static uint32_t erase_sector_from_ram(uint32_t sector_bits)
{
    FLASH->CR = (FLASH->CR & CR_PSIZE_MASK) | FLASH_PSIZE_WORD;
    FLASH->CR = (FLASH->CR & ~FLASH_CR_SNB) | FLASH_CR_SER | sector_bits;
    FLASH->CR |= FLASH_CR_STRT;
    while (FLASH->SR & FLASH_SR_BSY) {
        IWDG->KR = NF_IWDG_RELOAD_KEY;
    }
    FLASH->CR &= ~(FLASH_CR_SER | FLASH_CR_SNB);
    return FLASH->SR;
}

int nf_cf_flash_erase_slot(uint32_t slot)
{
    if (slot >= NF_CF_STORE_SLOTS) {
        return NF_CF_FLASH_RANGE;
    }
    /* FLASH_Sector_n is n << 3: the SNB field of FLASH_CR. */
    const uint32_t sector_bits = (NF_CF_STORE_FIRST_SECTOR + slot) << 3;
    __disable_irq();
    if (!nf_cf_flash_may_write()) {
        __enable_irq();
        return NF_CF_FLASH_BUSY;
    }
    FLASH_Unlock();
    FLASH_ClearFlag(FLASH_FLAG_EOP | NF_FLASH_ERROR_FLAGS);
    const uint32_t status = erase_sector_from_ram(sector_bits);
    FLASH_Lock();
    flush_data_cache();
    __enable_irq();
    return (status & NF_FLASH_ERROR_FLAGS) ? NF_CF_FLASH_ERROR : NF_CF_FLASH_OK;
}

int nf_cf_flash_program(uint32_t slot, uint32_t offset, const uint8_t *data, uint32_t length)
{
    if (slot >= NF_CF_STORE_SLOTS || offset > NF_CF_STORE_SLOT_BYTES ||
        length > NF_CF_STORE_SLOT_BYTES - offset) {
        return NF_CF_FLASH_RANGE;
    }
    const uint32_t base = NF_CF_STORE_BASE + slot * NF_CF_STORE_SLOT_BYTES + offset;
    int rc = NF_CF_FLASH_OK;
    if (!nf_cf_flash_may_write()) {
        return NF_CF_FLASH_BUSY;
    }
    FLASH_Unlock();
    FLASH_ClearFlag(FLASH_FLAG_EOP | NF_FLASH_ERROR_FLAGS);
    /* Words where aligned, bytes at an unaligned start or end. Programming a location that
       is not erased only clears bits on the F4 (no ECC), which is the NOR rule the store
       relies on. */
    for (uint32_t done = 0; done < length && rc == NF_CF_FLASH_OK;) {
        const uint32_t address = base + done;
        FLASH_Status status;
        if ((address & 3u) == 0u && length - done >= 4u) {
            uint32_t word;
            memcpy(&word, data + done, 4u);
            status = FLASH_ProgramWord(address, word);
            done += 4u;
        } else {
            status = FLASH_ProgramByte(address, data[done]);
            done += 1u;
        }
        if (status != FLASH_COMPLETE) {
            rc = NF_CF_FLASH_ERROR;
        }
    }
    FLASH_Lock();
    flush_data_cache();
    return rc;
}

static int ops_erase(void *ctx, unsigned slot)
{
    (void)ctx;
    return nf_cf_flash_erase_slot(slot);
}

static int ops_program(void *ctx, unsigned slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    (void)ctx;
    return nf_cf_flash_program(slot, offset, data, len);
}

static const uint8_t *ops_read_base(void *ctx, unsigned slot)
{
    (void)ctx;
    return nf_cf_flash_slot(slot);
}

const nf_flash_ops nf_cf_flash_ops = {
    .ctx = 0,
    .slot_bytes = NF_CF_STORE_SLOT_BYTES,
    .erase_slot = ops_erase,
    .program = ops_program,
    .read_base = ops_read_base,
};
