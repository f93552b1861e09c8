/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the sheepdog driver's image-name parser and of its 48-byte
 * little-endian request/response header encoders.
 */
#include "block/sheepdog_proto.h"

static int failures;

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
                    __LINE__, #cond); \
            failures++; \
        } \
    } while (0)

static void check_ok(const char *fn, const char *host, int port,
                     const char *sock, const char *vdi, uint32_t snap_id,
                     const char *tag)
{
    SheepdogName n;
    Error *err = NULL;

    if (sd_parse_name(fn, &n, &err) < 0) {
        fprintf(stderr, "parse '%s' failed: %s\n", fn, error_get_pretty(err));
        error_free(err);
        failures++;
        return;
    }
    CHECK(!strcmp(n.host, host));
    CHECK(n.port == port);
    CHECK(!g_strcmp0(n.socket, sock));
    CHECK(!strcmp(n.vdi, vdi));
    CHECK(n.snap_id == snap_id);
    CHECK(!strcmp(n.tag, tag));
    sd_name_clear(&n);
}

static void check_err(const char *fn, const char *msg_part)
{
    SheepdogName n;
    Error *err = NULL;

    if (sd_parse_name(fn, &n, &err) == 0) {
        fprintf(stderr, "parse '%s' unexpectedly succeeded\n", fn);
        sd_name_clear(&n);
        failures++;
        return;
    }
    CHECK(err != NULL);
    if (err) {
        const char *m = error_get_pretty(err);
        if (!strstr(m, msg_part) || strchr(m, '\n')) {
            fprintf(stderr, "'%s': message '%s' lacks '%s'\n", fn, m,
                    msg_part);
            failures++;
        }
        error_free(err);
    }
}

static void test_names(void)
{
    char *s;

    check_ok("sheepdog:vol", "localhost", 7000, NULL, "vol", 0, "");
    check_ok("sheepdog:vol:3", "localhost", 7000, NULL, "vol", 3, "");
    check_ok("sheepdog:vol:snap1", "localhost", 7000, NULL, "vol", 0,
             "snap1");
    check_ok("sheepdog:vol:4294967295", "localhost", 7000, NULL, "vol",
             4294967295U, "");
    check_ok("sheepdog:vol:4294967296", "localhost", 7000, NULL, "vol", 0,
             "4294967296");
    check_ok("sheepdog:vol:0", "localhost", 7000, NULL, "vol", 0, "0");
    check_ok("sheepdog:10.0.0.1:7001:vol", "10.0.0.1", 7001, NULL, "vol", 0,
             "");
    check_ok("sheepdog:host:7001:vol:7", "host", 7001, NULL, "vol", 7, "");
    check_ok("sheepdog:host:7001:vol:a:b", "host", 7001, NULL, "vol", 0,
             "a:b");
    check_ok("sheepdog://h/vol", "h", 7000, NULL, "vol", 0, "");
    check_ok("sheepdog:///vol", "localhost", 7000, NULL, "vol", 0, "");
    check_ok("sheepdog+tcp://h:8000/vol#12", "h", 8000, NULL, "vol", 12, "");
    check_ok("sheepdog+tcp://[::1]:8000/vol#tag", "::1", 8000, NULL, "vol",
             0, "tag");
    check_ok("sheepdog://h/a%20b#t%23", "h", 7000, NULL, "a b", 0, "t#");
    check_ok("sheepdog+unix:///vol?socket=/tmp/sd.sock", "", 0,
             "/tmp/sd.sock", "vol", 0, "");
    check_ok("sheepdog+unix:///vol?socket=/tmp/s#5", "", 0, "/tmp/s", "vol",
             5, "");

    check_err("sheepdog:", "missing VDI name");
    check_err("sheepdog:vol:", "empty snapshot");
    check_err("sheepdog:h:0:vol", "invalid port");
    check_err("sheepdog:h:70000:vol", "invalid port");
    check_err("sheepdog:h:x:vol", "invalid port");
    check_err("sheepdog://h:/vol", "empty port");
    /* HOST::VDI used to mean port 7000 without a word */
    check_err("sheepdog:h::vol", "empty port");
    check_err("sheepdog::7001:vol", "empty host");
    check_err("sheepdog::::", "empty host");
    check_err("sheepdog://h", "lacks");
    check_err("sheepdog://h/", "missing VDI name");
    check_err("sheepdog://h/vol?socket=/x", "no query");
    check_err("sheepdog+unix://h/vol?socket=/x", "no host");
    check_err("sheepdog+unix:///vol", "needs '?socket");
    check_err("sheepdog+unix:///vol?sock=/x", "only parameter");
    check_err("sheepdog+unix:///vol?socket=/x&a=b", "only parameter");
    check_err("sheepdog://h/v%zz", "malformed");
    check_err("nbd:foo", "not a sheepdog");

    s = g_strdup_printf("sheepdog:%0256d", 0);
    check_err(s, "VDI name is too long");
    g_free(s);
    s = g_strdup_printf("sheepdog:%0255d", 0);
    check_ok(s, "localhost", 7000, NULL, s + 9, 0, "");
    g_free(s);
    s = g_strdup_printf("sheepdog:vol:t%0255d", 0);
    check_err(s, "tag is too long");
    g_free(s);
    s = g_strdup_printf("sheepdog:%0256d:7000:vol", 0);
    check_err(s, "host name is too long");
    g_free(s);
    s = g_strdup_printf("sheepdog+unix:///vol?socket=/%0200d", 0);
    check_err(s, "socket path is too long");
    g_free(s);
}

static void test_headers(void)
{
    SheepdogReq req = { 0 }, req2;
    SheepdogRsp rsp = { 0 }, rsp2;
    uint8_t b[SD_HDR_SIZE];

    req.proto_ver = SD_PROTO_VER;
    req.opcode = SD_OP_CREATE_AND_WRITE_OBJ;
    req.flags = SD_FLAG_CMD_WRITE | SD_FLAG_CMD_COW;
    req.id = 0x11223344;
    req.data_length = 0x1000;
    req.obj.oid = UINT64_C(0x00abcdef00000005);
    req.obj.cow_oid = UINT64_C(0x00abcdee00000005);
    req.obj.copies = 3;
    req.obj.offset = 0x00400000 - 512;
    sd_req_encode(&req, b);
    CHECK(b[0] == 2 && b[1] == 1 && b[2] == 3 && b[3] == 0);
    CHECK(b[8] == 0x44 && b[9] == 0x33 && b[10] == 0x22 && b[11] == 0x11);
    CHECK(b[12] == 0x00 && b[13] == 0x10 && b[14] == 0 && b[15] == 0);
    CHECK(b[16] == 5 && b[20] == 0xef && b[21] == 0xcd && b[22] == 0xab &&
          b[23] == 0);
    CHECK(b[24] == 5 && b[28] == 0xee);
    CHECK(b[32] == 3);
    CHECK(b[40] == 0x00 && b[41] == 0xfe && b[42] == 0x3f && b[43] == 0);
    sd_req_decode(b, &req2);
    CHECK(!memcmp(&req, &req2, sizeof(req)));

    memset(&req, 0, sizeof(req));
    req.opcode = SD_OP_NEW_VDI;
    req.vdi.vdi_size = UINT64_C(64) << 20;
    req.vdi.base_vdi_id = 0x7c2b25;
    req.vdi.copies = 2;
    req.vdi.copy_policy = 0x21;
    req.vdi.block_size_shift = 22;
    req.vdi.snapid = 9;
    req.vdi.type = 1;
    sd_req_encode(&req, b);
    CHECK(b[1] == 0x11);
    CHECK(b[16] == 0 && b[19] == 0x04 && b[18] == 0);
    CHECK(b[24] == 0x25 && b[25] == 0x2b && b[26] == 0x7c && b[27] == 0);
    CHECK(b[28] == 2 && b[29] == 0x21 && b[30] == 0 && b[31] == 22);
    CHECK(b[32] == 9 && b[36] == 1);
    for (int i = 40; i < 48; i++) {
        CHECK(b[i] == 0);
    }

    rsp.opcode = SD_OP_LOCK_VDI;
    rsp.id = 7;
    rsp.result = SD_RES_VDI_LOCKED;
    rsp.vdi_id = 0xabcdef;
    rsp.copies = 3;
    rsp.block_size_shift = 22;
    sd_rsp_encode(&rsp, b);
    CHECK(b[16] == 7 && b[24] == 0xef && b[26] == 0xab && b[32] == 3 &&
          b[33] == 22);
    sd_rsp_decode(b, &rsp2);
    CHECK(!memcmp(&rsp, &rsp2, sizeof(rsp)));

    memset(b, 0, sizeof(b));
    b[1] = SD_OP_GET_CLUSTER_DEFAULT;
    b[20] = 3;
    b[21] = 0x12;
    b[22] = 23;
    sd_rsp_decode(b, &rsp2);
    CHECK(rsp2.nr_copies == 3 && rsp2.copy_policy == 0x12 &&
          rsp2.default_block_size_shift == 23);

    CHECK(sd_vid_to_vdi_oid(0x123456) == UINT64_C(0x8012345600000000));
    CHECK(sd_vid_to_data_oid(0x123456, 7) == UINT64_C(0x0012345600000007));
    CHECK(sd_vid_to_vmstate_oid(1, 2) == UINT64_C(0x4000000100000002));
    /* FNV-1a-64 of "" is the offset basis; of "a" a known value */
    CHECK(sd_name_hash("") == (UINT64_C(0xcbf29ce484222325) & 0xffffff));
    CHECK(sd_name_hash("a") == (UINT64_C(0xaf63dc4c8601ec8c) & 0xffffff));
    CHECK(!strcmp(sd_strerror(SD_RES_VDI_LOCKED), "VDI is locked"));
    CHECK(!strcmp(sd_strerror(0x95), "unknown error 0x95"));
}

static void test_inode_header(void)
{
    g_autofree uint8_t *buf = g_malloc0(SD_INODE_HEADER_SIZE);
    SheepdogInodeHeader h;

    strcpy((char *)buf, "vol");
    strcpy((char *)buf + 256, "tag");
    buf[520] = 1;
    buf[536 + 3] = 0x04;        /* 64 MiB */
    buf[554] = 3;
    buf[555] = 22;
    buf[556] = 2;
    buf[560] = 0x56;
    buf[561] = 0x34;
    buf[562] = 0x12;
    buf[564] = 9;
    sd_inode_header_decode(buf, &h);
    CHECK(!strcmp(h.name, "vol") && !strcmp(h.tag, "tag"));
    CHECK(h.snap_ctime == 1 && h.vdi_size == (UINT64_C(64) << 20));
    CHECK(h.nr_copies == 3 && h.block_size_shift == 22 && h.snap_id == 2);
    CHECK(h.vdi_id == 0x123456 && h.parent_vdi_id == 9);
}

int main(void)
{
    test_names();
    test_headers();
    test_inode_header();
    if (failures) {
        fprintf(stderr, "FAIL test-sheepdog-names (%d)\n", failures);
        return 1;
    }
    printf("PASS test-sheepdog-names\n");
    return 0;
}
