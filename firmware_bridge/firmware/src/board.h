#ifndef NF_BOARD_H
#define NF_BOARD_H
#include <stdint.h>
void board_init(void);
int board_uart_getc(void);          /* next received byte, or -1 */
int board_uart_rx_empty(void);
uint32_t board_uart_rx_overflows(void);
void board_wait_for_interrupt(void);
void board_control_tick(uint32_t now_ms); /* called from SysTick (main.c) */
/* Reload the independent watchdog, but only when the control-loop timer has ticked since the
 * last reload: a main loop that stops, or a timer interrupt (the dead man's switch) that
 * stops, ends in a reset. Called from the main loop. */
void board_watchdog_feed(void);
/* Zero the motor outputs without touching the bridge's state or the stack beyond a few
 * words: for the fault handlers. */
void board_motors_off(void);
#endif
