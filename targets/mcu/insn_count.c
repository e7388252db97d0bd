/* QEMU TCG plugin: count the guest instructions executed between two addresses.
 *
 *   qemu-system-arm ... -plugin insn_count.so,begin=0x1234,end=0x1240,out=counts.txt
 *
 * Every translated block adds its instruction count to a counter when it runs (inline, so the
 * count is exact and the same on every run); the instructions at `begin` and `end` (the test
 * firmware's marker functions around one inference) snapshot the counter. At exit, `out` gets
 * "<instructions between the markers> <total instructions>".
 *
 * Debian's QEMU 7.2 ships no plugin header, so the API v1 prototypes are declared here. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb* tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void* userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void* userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb* tb);
struct qemu_plugin_insn* qemu_plugin_tb_get_insn(const struct qemu_plugin_tb* tb, size_t idx);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn* insn);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb* tb, enum qemu_plugin_op op,
                                              void* ptr, uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn* insn,
                                            qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void* userdata);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void* userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

static uint64_t count, at_begin, at_end, begin_addr, end_addr;
static int seen_begin, seen_end;
static char out_path[1024];

static void on_begin(unsigned int vcpu, void* u) {
    (void)vcpu; (void)u;
    if (!seen_begin) { at_begin = count; seen_begin = 1; }
}

static void on_end(unsigned int vcpu, void* u) {
    (void)vcpu; (void)u;
    if (seen_begin && !seen_end) { at_end = count; seen_end = 1; }
}

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb* tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &count, n);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        if (pc == begin_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_begin, QEMU_PLUGIN_CB_NO_REGS, 0);
        if (pc == end_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, 0);
    }
}

static void on_qemu_exit(qemu_plugin_id_t id, void* u) {
    (void)id; (void)u;
    FILE* f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (!f) return;
    long long between = seen_begin && seen_end ? (long long)(at_end - at_begin) : -1;
    fprintf(f, "%lld %llu\n", between, (unsigned long long)count);
    if (f != stderr) fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id,
                                                               const qemu_info_t* info,
                                                               int argc, char** argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (!strncmp(argv[i], "begin=", 6)) begin_addr = strtoull(argv[i] + 6, 0, 0) & ~1ull;
        else if (!strncmp(argv[i], "end=", 4)) end_addr = strtoull(argv[i] + 4, 0, 0) & ~1ull;
        else if (!strncmp(argv[i], "out=", 4)) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
    qemu_plugin_register_atexit_cb(id, on_qemu_exit, 0);
    return 0;
}
