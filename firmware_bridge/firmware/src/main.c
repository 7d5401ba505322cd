/* nanofly serial bridge firmware: receive frames on USART1, answer them, sleep when idle, keep
 * the independent watchdog fed while the loop and the control-loop timer both run. */
#include "board.h"
#include "bridge.h"
#include "flash_store.h"

void board_control_tick(uint32_t now_ms) { bridge_control_tick(now_ms); }

int main(void) {
    board_init();
    bridge_init(flash_store_init()); /* boots the newest valid model from the store */
    for (;;) {
        board_watchdog_feed();
        int c;
        while ((c = board_uart_getc()) >= 0) {
            uint8_t byte = (uint8_t)c;
            bridge_count_rx_overflow(board_uart_rx_overflows());
            bridge_feed(&byte, 1);
            board_watchdog_feed(); /* a stream of frames can keep this loop going */
        }
        board_wait_for_interrupt();
    }
}
