/* Minimal Cortex-M startup for the test firmware: vector table, .data copy (with the GOT the
 * LLVM kernels read the workspace hooks through), .bss clear, FPU on, main, exit code. */
#include <stdint.h>
#include "harness.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
int main(void);

void Reset_Handler(void) {
    uint32_t* src = &__data_load;
    uint32_t* dst = &__data_start;
    while (dst < &__data_end) *dst++ = *src++;
    for (dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10 and CP11 full access */
    __asm__ volatile("dsb\n\tisb");
#endif
    edlc_exit(main());
}

static void Fault_Handler(void) {
    edlc_puts("edlc: fault\n");
    edlc_exit(3);
}

__attribute__((section(".vectors"), used)) void (*const edlc_vectors[16])(void) = {
    (void (*)(void))(&__stack_top), Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0,
    Fault_Handler, Fault_Handler,
};
