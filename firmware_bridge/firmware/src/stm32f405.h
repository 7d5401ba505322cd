/* The few STM32F405 registers the bridge uses (RM0090). */
#ifndef NF_STM32F405_H
#define NF_STM32F405_H
#include <stdint.h>
#define REG32(addr) (*(volatile uint32_t *)(addr))

/* RCC */
#define RCC_BASE 0x40023800u
#define RCC_CR REG32(RCC_BASE + 0x00)
#define RCC_PLLCFGR REG32(RCC_BASE + 0x04)
#define RCC_CFGR REG32(RCC_BASE + 0x08)
#define RCC_AHB1ENR REG32(RCC_BASE + 0x30)
#define RCC_APB1ENR REG32(RCC_BASE + 0x40)
#define RCC_APB2ENR REG32(RCC_BASE + 0x44)
#define RCC_CR_HSION (1u << 0)
#define RCC_CR_HSIRDY (1u << 1)
#define RCC_CR_HSEON (1u << 16)
#define RCC_CR_HSERDY (1u << 17)
#define RCC_CR_PLLON (1u << 24)
#define RCC_CR_PLLRDY (1u << 25)

/* Flash interface and power controller */
#define FLASH_ACR REG32(0x40023C00u)
#define FLASH_KEYR REG32(0x40023C04u)
#define FLASH_SR REG32(0x40023C0Cu)
#define FLASH_CR REG32(0x40023C10u)
#define PWR_CR REG32(0x40007000u)

/* GPIOA */
#define GPIOA_BASE 0x40020000u
#define GPIOA_MODER REG32(GPIOA_BASE + 0x00)
#define GPIOA_OSPEEDR REG32(GPIOA_BASE + 0x08)
#define GPIOA_PUPDR REG32(GPIOA_BASE + 0x0C)
#define GPIOA_AFRH REG32(GPIOA_BASE + 0x24)

/* USART1 (APB2) */
#define USART1_BASE 0x40011000u
#define USART1_SR REG32(USART1_BASE + 0x00)
#define USART1_DR REG32(USART1_BASE + 0x04)
#define USART1_BRR REG32(USART1_BASE + 0x08)
#define USART1_CR1 REG32(USART1_BASE + 0x0C)
#define USART_SR_ORE (1u << 3)
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TXE (1u << 7)
#define USART_CR1_RE (1u << 2)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_RXNEIE (1u << 5)
#define USART_CR1_UE (1u << 13)
#define USART1_IRQN 37

/* IWDG: the independent watchdog, clocked by the LSI RC oscillator (32 kHz nominal,
 * 17-47 kHz over parts and temperature); once started only a reset stops it */
#define IWDG_BASE 0x40003000u
#define IWDG_KR REG32(IWDG_BASE + 0x00)
#define IWDG_PR REG32(IWDG_BASE + 0x04)
#define IWDG_RLR REG32(IWDG_BASE + 0x08)
#define IWDG_SR REG32(IWDG_BASE + 0x0C)
#define IWDG_KEY_RELOAD 0xAAAAu
#define IWDG_KEY_UNLOCK 0x5555u
#define IWDG_KEY_START 0xCCCCu

/* TIM5 (APB1, 32-bit) */
#define TIM5_BASE 0x40000C00u
#define TIM5_CR1 REG32(TIM5_BASE + 0x00)
#define TIM5_EGR REG32(TIM5_BASE + 0x14)
#define TIM5_CNT REG32(TIM5_BASE + 0x24)
#define TIM5_PSC REG32(TIM5_BASE + 0x28)
#define TIM5_ARR REG32(TIM5_BASE + 0x2C)

/* Cortex-M4 core */
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define NVIC_ISER(n) REG32(0xE000E100u + 4u * (n))
#define NVIC_IPR_BYTE(n) (*(volatile uint8_t *)(0xE000E400u + (n)))
#define SCB_SHPR3 REG32(0xE000ED20u)
#define SCB_CPACR REG32(0xE000ED88u)
#define SCB_VTOR REG32(0xE000ED08u)
#define DEMCR REG32(0xE000EDFCu)
#define DWT_CTRL REG32(0xE0001000u)
#define DWT_CYCCNT REG32(0xE0001004u)
#endif
