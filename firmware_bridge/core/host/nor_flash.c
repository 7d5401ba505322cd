/* File-backed NOR-flash emulator (API and semantics: nor_flash.h). */
#define _GNU_SOURCE
#include "nor_flash.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int nf_nor_open(nf_nor *nor, const char *path, uint32_t n_sectors, const uint32_t *sector_bytes,
                char *err, size_t err_len) {
    memset(nor, 0, sizeof *nor);
    nor->fd = -1;
    if (n_sectors == 0 || n_sectors > NF_NOR_MAX_SECTORS) {
        snprintf(err, err_len, "%u sectors: between 1 and %d", n_sectors, NF_NOR_MAX_SECTORS);
        return -1;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_sectors; i++) {
        if (sector_bytes[i] == 0 || sector_bytes[i] % 4) {
            snprintf(err, err_len, "sector %u: size %u is not a positive multiple of 4", i, sector_bytes[i]);
            return -1;
        }
        nor->sector_start[i] = (uint32_t)total;
        total += sector_bytes[i];
    }
    if (total > 0x40000000u) {
        snprintf(err, err_len, "flash of %llu bytes is too large", (unsigned long long)total);
        return -1;
    }
    nor->sector_start[n_sectors] = (uint32_t)total;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(err, err_len, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (st.st_size == 0) {
        /* a new image: erased flash */
        uint8_t ff[4096];
        memset(ff, 0xFF, sizeof ff);
        for (uint64_t done = 0; done < total;) {
            size_t n = total - done < sizeof ff ? (size_t)(total - done) : sizeof ff;
            ssize_t w = pwrite(fd, ff, n, (off_t)done);
            if (w <= 0) {
                snprintf(err, err_len, "%s: %s", path, w < 0 ? strerror(errno) : "short write");
                close(fd);
                return -1;
            }
            done += (uint64_t)w;
        }
        fsync(fd);
    } else if ((uint64_t)st.st_size != total) {
        snprintf(err, err_len, "%s is %lld bytes, not a flash image of %llu bytes (another layout? "
                 "use a new file)", path, (long long)st.st_size, (unsigned long long)total);
        close(fd);
        return -1;
    }
    void *mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (mem == MAP_FAILED) {
        snprintf(err, err_len, "%s: mmap: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    nor->fd = fd;
    nor->mem = mem;
    nor->size = (uint32_t)total;
    nor->n_sectors = n_sectors;
    nor->ops_left = -1;
    nor->powered = 1;
    return 0;
}

void nf_nor_close(nf_nor *nor) {
    if (nor->mem) {
        msync(nor->mem, nor->size, MS_SYNC);
        munmap(nor->mem, nor->size);
    }
    if (nor->fd >= 0) close(nor->fd);
    nor->mem = NULL;
    nor->fd = -1;
}

void nf_nor_set_cut(nf_nor *nor, int64_t ops, uint32_t tear_bytes) {
    nor->ops_left = ops;
    nor->tear_bytes = tear_bytes;
    nor->powered = 1;
    nor->trace_n = 0;
}

/* How many bytes of an operation of len bytes happen: len, or fewer when the power goes. */
static int64_t power_budget(nf_nor *nor, uint8_t kind, uint32_t len) {
    if (!nor->powered) return -1;
    nor->ops++;
    if (nor->trace_n < NF_NOR_TRACE) {
        nor->trace_kind[nor->trace_n] = kind;
        nor->trace_len[nor->trace_n] = len;
    }
    nor->trace_n++;
    if (nor->ops_left < 0) return len;
    if (nor->ops_left > 0) {
        nor->ops_left--;
        return len;
    }
    nor->powered = 0; /* this operation is cut */
    return nor->tear_bytes < len ? nor->tear_bytes : len;
}

int nf_nor_erase_sector(nf_nor *nor, uint32_t sector) {
    if (sector >= nor->n_sectors) return NF_NOR_ERR_RANGE;
    uint32_t start = nor->sector_start[sector], len = nor->sector_start[sector + 1] - start;
    int64_t n = power_budget(nor, 'E', len);
    if (n < 0) return NF_NOR_ERR_POWER;
    memset(nor->mem + start, 0xFF, (size_t)n);
    nor->erases++;
    return n == len ? 0 : NF_NOR_ERR_POWER;
}

int nf_nor_program(nf_nor *nor, uint32_t address, const uint8_t *data, uint32_t len) {
    if (address > nor->size || len > nor->size - address) return NF_NOR_ERR_RANGE;
    int64_t n = power_budget(nor, 'P', len);
    if (n < 0) return NF_NOR_ERR_POWER;
    for (int64_t i = 0; i < n; i++) nor->mem[address + i] &= data[i]; /* only clears bits */
    nor->programs++;
    nor->bytes_programmed += (uint64_t)n;
    return n == len ? 0 : NF_NOR_ERR_POWER;
}

/* ---- flash ops for the store ------------------------------------------------------------ */

static int ops_erase(void *ctx, unsigned slot) {
    nf_nor *nor = ctx;
    if (slot >= 2) return NF_NOR_ERR_RANGE;
    for (uint32_t i = 0; i < nor->slot_sectors; i++) {
        int rc = nf_nor_erase_sector(nor, nor->slot_first_sector[slot] + i);
        if (rc) return rc;
    }
    return 0;
}

static int ops_program(void *ctx, unsigned slot, uint32_t offset, const uint8_t *data, uint32_t len) {
    nf_nor *nor = ctx;
    if (slot >= 2) return NF_NOR_ERR_RANGE;
    uint32_t base = nor->sector_start[nor->slot_first_sector[slot]];
    uint32_t end = nor->sector_start[nor->slot_first_sector[slot] + nor->slot_sectors];
    if (offset > end - base || len > end - base - offset) return NF_NOR_ERR_RANGE;
    return nf_nor_program(nor, base + offset, data, len);
}

static const uint8_t *ops_base(void *ctx, unsigned slot) {
    nf_nor *nor = ctx;
    return nor->mem + nor->sector_start[nor->slot_first_sector[slot & 1u]];
}

void nf_nor_flash_ops(nf_nor *nor, nf_flash_ops *ops, const uint32_t first_sector[2], uint32_t sectors) {
    nor->slot_first_sector[0] = first_sector[0];
    nor->slot_first_sector[1] = first_sector[1];
    nor->slot_sectors = sectors;
    uint32_t bytes[2];
    for (int s = 0; s < 2; s++) {
        uint32_t a = first_sector[s], b = first_sector[s] + sectors;
        if (b > nor->n_sectors) b = nor->n_sectors;
        if (a > b) a = b;
        bytes[s] = nor->sector_start[b] - nor->sector_start[a];
    }
    memset(ops, 0, sizeof *ops);
    ops->ctx = nor;
    ops->slot_bytes = bytes[0] < bytes[1] ? bytes[0] : bytes[1];
    ops->erase_slot = ops_erase;
    ops->program = ops_program;
    ops->read_base = ops_base;
}
