/* STM32F405 board support: clocks, USART1 (interrupt-driven receive into a ring buffer),
 * SysTick control-loop timer (1 kHz armed, 100 Hz idle), inference cost counter, independent
 * watchdog, motor outputs. Implements hal.h.
 *
 * The same code runs on the real chip and on QEMU netduinoplus2. QEMU's RCC is a stub that
 * reads as zero, so every wait on a ready bit is bounded and the clock set-up notices the
 * stub (RCC_CR reads 0, impossible on silicon where HSION is set at reset) and falls back to
 * the 168 MHz that QEMU models. */
#include "board.h"

#include "hal.h"
#include "protocol.h"
#include "stm32f405.h"

#ifndef NF_HSE_HZ
#define NF_HSE_HZ 8000000u   /* Crazyflie 2.x crystal */
#endif
#ifndef NF_BAUD
#define NF_BAUD 115200u
#endif
#define SYSCLK_PLL_HZ 168000000u
#define HSI_HZ 16000000u
#define READY_WAIT_LOOPS 200000u

/* Independent watchdog period, in LSI / 32 ticks (1 ms each at the nominal 32 kHz; 0.68 to
 * 1.9 ms over the LSI's range). Longer than the slowest main-loop pass: COMMIT checks a full
 * model slot twice, ~180 ms when the PLL failed and the core runs from the 16 MHz HSI. */
#ifndef NF_WATCHDOG_TICKS
#define NF_WATCHDOG_TICKS 500u
#endif

#define CLOCK_FLAG_PLL 1u    /* PLL locked, 168 MHz */
#define CLOCK_FLAG_RCC_STUB 2u /* RCC reads as zero: an emulator */

static uint32_t sysclk_hz = HSI_HZ;
static uint32_t apb2_hz = HSI_HZ;
static uint8_t clock_flags;
static uint8_t counter_kind = NF_COUNTER_NONE;
static volatile uint32_t millis;

static int wait_bits(volatile uint32_t *reg, uint32_t mask, uint32_t value) {
    for (uint32_t i = 0; i < READY_WAIT_LOOPS; i++)
        if ((*reg & mask) == value) return 1;
    return 0;
}

static void clock_init(void) {
    if (RCC_CR == 0) {
        /* No silicon reads RCC_CR as 0 (HSION/HSIRDY are set out of reset): QEMU's stub. */
        clock_flags = CLOCK_FLAG_RCC_STUB;
        sysclk_hz = SYSCLK_PLL_HZ;
        apb2_hz = SYSCLK_PLL_HZ / 2;
        return;
    }
    /* 168 MHz: HSE 8 MHz / M 8 * N 336 / P 2; Q 7 gives USB 48 MHz. Voltage scale 1 and
     * 5 flash wait states first, AHB /1, APB1 /4 (42 MHz), APB2 /2 (84 MHz). */
    RCC_APB1ENR |= 1u << 28; /* PWREN */
    PWR_CR |= 1u << 14;      /* VOS: scale 1 */
    uint32_t source_hz = NF_HSE_HZ, pllsrc = 1u << 22;
    RCC_CR |= RCC_CR_HSEON;
    if (!wait_bits(&RCC_CR, RCC_CR_HSERDY, RCC_CR_HSERDY)) {
        RCC_CR &= ~RCC_CR_HSEON; /* no crystal: run the PLL from HSI */
        source_hz = HSI_HZ;
        pllsrc = 0;
    }
    uint32_t m = source_hz / 1000000u;
    RCC_PLLCFGR = m | (336u << 6) | (0u << 16) | pllsrc | (7u << 24);
    RCC_CR |= RCC_CR_PLLON;
    if (!wait_bits(&RCC_CR, RCC_CR_PLLRDY, RCC_CR_PLLRDY)) return; /* stay on HSI 16 MHz */
    FLASH_ACR = 5u | (1u << 8) | (1u << 9) | (1u << 10); /* 5 WS, prefetch, I/D cache */
    RCC_CFGR = (RCC_CFGR & ~0xFCF3u) | (5u << 10) | (4u << 13);
    RCC_CFGR = (RCC_CFGR & ~3u) | 2u; /* SW = PLL */
    if (!wait_bits(&RCC_CFGR, 0xCu, 0x8u)) return;
    sysclk_hz = SYSCLK_PLL_HZ;
    apb2_hz = SYSCLK_PLL_HZ / 2;
    clock_flags |= CLOCK_FLAG_PLL;
}

/* ---- USART1: PA9 TX, PA10 RX (AF7) ----------------------------------------------------- */
#define RX_RING_BYTES 2048u /* power of two */
static volatile uint8_t rx_ring[RX_RING_BYTES];
static volatile uint32_t rx_head, rx_tail, rx_overflows;

static void uart_init(void) {
    RCC_AHB1ENR |= 1u << 0;  /* GPIOA */
    RCC_APB2ENR |= 1u << 4;  /* USART1 */
    GPIOA_MODER = (GPIOA_MODER & ~(0xFu << 18)) | (0xAu << 18);    /* PA9, PA10 alternate */
    GPIOA_AFRH = (GPIOA_AFRH & ~(0xFFu << 4)) | (0x77u << 4);       /* AF7 = USART1 */
    GPIOA_OSPEEDR |= 0xFu << 18;
    GPIOA_PUPDR = (GPIOA_PUPDR & ~(0x3u << 20)) | (0x1u << 20);    /* pull-up on RX */
    /* Oversampling by 16: BRR = fCK / baud, rounded (mantissa.fraction in one number). */
    USART1_BRR = (apb2_hz + NF_BAUD / 2) / NF_BAUD;
    USART1_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE | USART_CR1_RXNEIE;
    NVIC_IPR_BYTE(USART1_IRQN) = 0x40;
    NVIC_ISER(USART1_IRQN / 32) = 1u << (USART1_IRQN % 32);
}

void USART1_IRQHandler(void) {
    uint32_t sr = USART1_SR;
    if (sr & (USART_SR_RXNE | USART_SR_ORE)) {
        uint8_t byte = (uint8_t)USART1_DR; /* reading SR then DR also clears ORE */
        uint32_t head = rx_head;
        if (head - rx_tail < RX_RING_BYTES) {
            rx_ring[head % RX_RING_BYTES] = byte;
            rx_head = head + 1;
        } else {
            rx_overflows++;
        }
        if (sr & USART_SR_ORE) rx_overflows++;
    }
}

int board_uart_getc(void) {
    uint32_t tail = rx_tail;
    if (tail == rx_head) return -1;
    uint8_t byte = rx_ring[tail % RX_RING_BYTES];
    rx_tail = tail + 1;
    return byte;
}

int board_uart_rx_empty(void) { return rx_tail == rx_head; }
uint32_t board_uart_rx_overflows(void) { return rx_overflows; }

void hal_uart_write(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        while (!(USART1_SR & USART_SR_TXE)) {
        }
        USART1_DR = data[i];
    }
}

/* ---- time and cost counter --------------------------------------------------------------- */
static volatile uint32_t tick_ms = 1;
static volatile uint32_t systick_count; /* SysTick interrupts so far (watchdog reloads) */

void SysTick_Handler(void) {
    uint32_t now = millis + tick_ms;
    millis = now;
    board_control_tick(now);
    systick_count++;
}

void hal_set_tick_ms(uint32_t ms) {
    uint32_t irq = hal_irq_save();
    if (ms != tick_ms) {
        /* count the part of the current period that has elapsed, then restart the period */
        uint32_t cycles_per_ms = sysclk_hz / 1000u;
        millis += (SYST_RVR - SYST_CVR) / cycles_per_ms;
        tick_ms = ms;
        SYST_RVR = cycles_per_ms * ms - 1u;
        SYST_CVR = 0;
    }
    hal_irq_restore(irq);
}

static void timers_init(void) {
    tick_ms = NF_IDLE_TICK_MS; /* disarmed at boot */
    SYST_RVR = sysclk_hz / 1000u * NF_IDLE_TICK_MS - 1u;
    SYST_CVR = 0;
    SCB_SHPR3 = (SCB_SHPR3 & 0x00FFFFFFu) | (0x20u << 24); /* above USART1: the switch first */
    SYST_CSR = 7u; /* processor clock, interrupt, enable */

    /* Cost counter: DWT cycles where they count (silicon), else TIM5, which QEMU with
     * -icount shift=0 advances by exactly one per executed instruction. */
    DEMCR |= 1u << 24;
    DWT_CYCCNT = 0;
    DWT_CTRL |= 1u;
    uint32_t c0 = DWT_CYCCNT;
    for (volatile int i = 0; i < 8; i++) {
    }
    if (DWT_CYCCNT != c0) {
        counter_kind = NF_COUNTER_DWT_CYCLES;
        return;
    }
    RCC_APB1ENR |= 1u << 3; /* TIM5 */
    TIM5_PSC = 0;
    TIM5_ARR = 0xFFFFFFFFu;
    TIM5_EGR = 1u;  /* load the prescaler */
    TIM5_CR1 = 1u;  /* count */
    counter_kind = NF_COUNTER_TIM5_TICKS;
}

uint32_t hal_cost_counter(void) {
    return counter_kind == NF_COUNTER_DWT_CYCLES ? DWT_CYCCNT : TIM5_CNT;
}
uint8_t hal_cost_counter_kind(void) { return counter_kind; }
uint32_t hal_millis(void) { return millis; }
uint32_t hal_sysclk_hz(void) { return sysclk_hz; }
uint8_t hal_clock_flags(void) { return clock_flags; }

/* ---- motor outputs and watchdog ---------------------------------------------------------- */
/* The duty ratios on the motor outputs. This board drives no PWM pins: a Crazyflie build sets
 * the TIM2/TIM4 compare registers where this array is written (hal_motors_write,
 * board_motors_off). The tests read it through QEMU's gdbstub. */
static volatile float motor_output[4];

void hal_motors_write(const float ratio[4]) {
    for (int i = 0; i < 4; i++) motor_output[i] = ratio[i];
}

void board_motors_off(void) {
    for (int i = 0; i < 4; i++) motor_output[i] = 0.0f;
}

static void watchdog_init(void) {
    /* Start first: that also starts the LSI, which the prescaler and reload updates below
     * need to complete (RM0090 27.3; ST's HAL does the same). Until they do, the reset values
     * apply (LSI / 4, 4095 ticks: 0.5 s at 32 kHz). */
    IWDG_KR = IWDG_KEY_START;  /* from here on only a reset stops it */
    IWDG_KR = IWDG_KEY_UNLOCK; /* PR and RLR writable */
    IWDG_PR = 3u;              /* LSI / 32 */
    IWDG_RLR = NF_WATCHDOG_TICKS;
    wait_bits(&IWDG_SR, 3u, 0u); /* both values taken over (bounded: QEMU has no IWDG) */
    IWDG_KR = IWDG_KEY_RELOAD;
}

void board_watchdog_feed(void) {
    static uint32_t fed_at_tick;
    uint32_t ticks = systick_count;
    if (ticks != fed_at_tick) {
        fed_at_tick = ticks;
        IWDG_KR = IWDG_KEY_RELOAD;
    }
}

uint32_t hal_irq_save(void) {
    uint32_t primask;
    __asm volatile("mrs %0, primask\n cpsid i" : "=r"(primask)::"memory");
    return primask;
}

void hal_irq_restore(uint32_t state) { __asm volatile("msr primask, %0" ::"r"(state) : "memory"); }

void board_wait_for_interrupt(void) {
    /* Sleep unless a byte arrived between the caller's check and here: with interrupts
     * masked, WFI still wakes on a pending one, and the handler runs after cpsie. */
    __asm volatile("cpsid i" ::: "memory");
    if (board_uart_rx_empty()) __asm volatile("dsb\n wfi" ::: "memory");
    __asm volatile("cpsie i\n isb" ::: "memory");
}

void board_init(void) {
    clock_init();
    uart_init();
    timers_init();
    watchdog_init();
}
