#ifndef NF_BOARD_H
#define NF_BOARD_H
#include <stdint.h>
void board_init(void);
int board_uart_getc(void);          /* next received byte, or -1 */
int board_uart_rx_empty(void);
uint32_t board_uart_rx_overflows(void);
void board_wait_for_interrupt(void);
void board_control_tick(uint32_t now_ms); /* called from SysTick (main.c) */
#endif
