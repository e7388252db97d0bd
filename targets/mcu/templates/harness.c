/* Test-firmware support over ARM semihosting (QEMU -semihosting): no newlib stdio, no heap. */
#include <stddef.h>
#include "harness.h"

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define PAINT 0xA5A5A5A5u

extern uint32_t __stack_limit, __stack_top;  /* from the linker script */

static int semihost(int op, void* arg) {
    register int r0 __asm__("r0") = op;
    register void* r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static uint32_t length(const char* s) {
    uint32_t n = 0;
    while (s[n]) n++;
    return n;
}

static int open_file(const char* path, uint32_t mode) {
    uint32_t args[3] = {(uint32_t)path, mode, length(path)};
    return semihost(SYS_OPEN, args);
}

static void close_file(int fd) {
    uint32_t args[1] = {(uint32_t)fd};
    semihost(SYS_CLOSE, args);
}

int edlc_read_file(const char* path, void* buf, uint32_t size) {
    int fd = open_file(path, 1 /* "rb" */);
    if (fd < 0) return -1;
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, size};
    int left = semihost(SYS_READ, args);  /* bytes not read */
    close_file(fd);
    return left == 0 ? 0 : -1;
}

int edlc_write_file(const char* path, const void* buf, uint32_t size) {
    int fd = open_file(path, 5 /* "wb" */);
    if (fd < 0) return -1;
    uint32_t args[3] = {(uint32_t)fd, (uint32_t)buf, size};
    int left = semihost(SYS_WRITE, args);
    close_file(fd);
    return left == 0 ? 0 : -1;
}

void edlc_puts(const char* s) { semihost(SYS_WRITE0, (void*)s); }

void edlc_put_u32(const char* label, uint32_t value) {
    char buf[12];
    int i = 11;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    edlc_puts(label);
    edlc_puts("=");
    edlc_puts(buf + i);
    edlc_puts(" ");
}

void edlc_exit(int code) {
    uint32_t args[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
    semihost(SYS_EXIT_EXTENDED, args);
    semihost(SYS_EXIT, (void*)ADP_STOPPED_APPLICATION_EXIT);  /* older hosts: no exit code */
    for (;;) {
    }
}

void edlc_stack_paint(void) {
    uint32_t* sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    for (uint32_t* p = &__stack_limit; p < sp - 16; p++) *p = PAINT;
}

uint32_t edlc_stack_used(void) {
    uint32_t* p = &__stack_limit;
    while (p < &__stack_top && *p == PAINT) p++;
    return (uint32_t)((char*)&__stack_top - (char*)p);
}

__attribute__((noinline, used)) void edlc_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline, used)) void edlc_mark_end(void) { __asm__ volatile("" ::: "memory"); }
