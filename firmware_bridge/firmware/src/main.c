/* nanofly serial bridge firmware: receive frames on USART1, answer them, sleep when idle, keep
 * the independent watchdog fed while the loop and the control-loop timer both run. */
#include "board.h"
#include "bridge.h"
#include "frame.h"

static nf_parser parser;

void board_control_tick(uint32_t now_ms) { bridge_control_tick(now_ms); }

int main(void) {
    board_init();
    nf_parser_init(&parser);
    bridge_set_parser(&parser);
    bridge_init();
    for (;;) {
        board_watchdog_feed();
        int c;
        while ((c = board_uart_getc()) >= 0) {
            nf_frame frame;
            if (nf_parser_push(&parser, (uint8_t)c, &frame)) {
                bridge_count_rx_overflow(board_uart_rx_overflows());
                bridge_handle_frame(&frame);
                board_watchdog_feed(); /* a stream of frames can keep this loop going */
            }
        }
        board_wait_for_interrupt();
    }
}
