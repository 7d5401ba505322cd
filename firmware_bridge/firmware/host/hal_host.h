#ifndef NF_HAL_HOST_H
#define NF_HAL_HOST_H
#include <stddef.h>
#include <stdint.h>
extern uint32_t host_now_ms;
extern void (*host_uart_sink)(const uint8_t *data, size_t len);
extern float host_motors[4];
#endif
