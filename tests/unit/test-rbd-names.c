/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Unit tests of the rbd image-name parser (block/rbd-name.c) and of the
 * command line's secret objects (util/secret.c). No Ceph needed.
 */
#include "block/rbd-name.h"
#include "util/secret.h"

static int failures;

#define CHECK(cond) do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, \
                    __LINE__, #cond); \
            failures++; \
        } \
    } while (0)

/* opts: "key=value;key=value" of the config keys expected, in order. */
static void check_ok(const char *fn, const char *pool, const char *ns,
                     const char *image, const char *snap, const char *conf,
                     const char *user, const char *opts)
{
    RbdName n;
    Error *err = NULL;
    GString *got = g_string_new(NULL);

    if (rbd_parse_name(fn, &n, &err) < 0) {
        fprintf(stderr, "parse '%s' failed: %s\n", fn, error_get_pretty(err));
        error_free(err);
        failures++;
        g_string_free(got, true);
        return;
    }
    for (unsigned i = 0; i < n.nr_opts; i++) {
        g_string_append_printf(got, "%s%s=%s", i ? ";" : "", n.keys[i],
                               n.values[i]);
    }
    if (strcmp(n.pool, pool) || g_strcmp0(n.ns, ns) ||
        strcmp(n.image, image) || g_strcmp0(n.snap, snap) ||
        g_strcmp0(n.conf, conf) || g_strcmp0(n.user, user) ||
        strcmp(got->str, opts)) {
        fprintf(stderr, "'%s': got pool '%s' ns '%s' image '%s' snap '%s' "
                "conf '%s' user '%s' opts '%s'\n", fn, n.pool,
                n.ns ? n.ns : "(null)", n.image, n.snap ? n.snap : "(null)",
                n.conf ? n.conf : "(null)", n.user ? n.user : "(null)",
                got->str);
        failures++;
    }
    g_string_free(got, true);
    rbd_name_clear(&n);
}

static void check_err(const char *fn, const char *msg_part)
{
    RbdName n;
    Error *err = NULL;

    if (rbd_parse_name(fn, &n, &err) == 0) {
        fprintf(stderr, "parse '%s' unexpectedly succeeded\n", fn);
        rbd_name_clear(&n);
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
    CHECK(n.pool == NULL && n.image == NULL && n.nr_opts == 0);
}

static void test_names(void)
{
    check_ok("rbd:pool/img", "pool", NULL, "img", NULL, NULL, NULL, "");
    check_ok("pool/img", "pool", NULL, "img", NULL, NULL, NULL, "");
    check_ok("rbd:pool/ns/img", "pool", "ns", "img", NULL, NULL, NULL, "");
    check_ok("rbd:pool/img@snap", "pool", NULL, "img", "snap", NULL, NULL,
             "");
    check_ok("rbd:pool/ns/img@snap:conf=/etc/ceph/x.conf:id=admin",
             "pool", "ns", "img", "snap", "/etc/ceph/x.conf", "admin", "");
    check_ok("rbd:p/i:mon_host=127.0.0.1\\:6789:auth_supported=none",
             "p", NULL, "i", NULL, NULL, NULL,
             "mon_host=127.0.0.1:6789;auth_supported=none");
    /* escapes: ':' '@' '/' '=' and '\' itself */
    check_ok("rbd:p\\/q/i\\@j\\:k@s\\:t", "p/q", NULL, "i@j:k", "s:t", NULL,
             NULL, "");
    check_ok("rbd:p/i:a\\=b=c\\\\d", "p", NULL, "i", NULL, NULL, NULL,
             "a=b=c\\d");
    check_ok("rbd:p/i:keyring=/k:key=AQB=", "p", NULL, "i", NULL, NULL, NULL,
             "keyring=/k;key=AQB=");
    /* a later conf= wins, as in QEMU */
    check_ok("rbd:p/i:conf=a:conf=b", "p", NULL, "i", NULL, "b", NULL, "");
    check_ok("rbd:p//i", "p", "", "i", NULL, NULL, NULL, "");

    check_err("rbd:img", "pool name is required");
    check_err("rbd:", "pool name is required");
    check_err("rbd:/img", "pool name must not be empty");
    check_err("rbd:pool/", "image name must not be empty");
    check_err("rbd:pool/@snap", "image name must not be empty");
    check_err("rbd:pool/img@", "snapshot name must not be empty");
    check_err("rbd:pool/img@:conf=x", "snapshot name must not be empty");
    check_err("rbd:a/b/c/d", "too many '/'");
    check_err("rbd:p/i:conf", "has no value");
    check_err("rbd:p/i:=x", "invalid conf option");
    check_err("rbd:p/i:a=b:", "has no value");

    /* bounded: a huge name and too many options are refused */
    {
        GString *s = g_string_new("rbd:p/");
        for (int i = 0; i < 5 * RBD_NAME_MAX; i++) {
            g_string_append_c(s, 'x');
        }
        check_err(s->str, "too long");
        g_string_assign(s, "rbd:p/i");
        for (int i = 0; i <= RBD_NAME_MAX_OPTS; i++) {
            g_string_append_printf(s, ":k%d=v", i);
        }
        check_err(s->str, "more than");
        g_string_free(s, true);
    }
}

static void test_has_config(void)
{
    static const struct { const char *name; const char *key; } cases[] = {
        { "rbd:p/i", NULL },
        { "rbd:p/ns/i@s", NULL },
        { "rbd:p/i:conf=/etc/passwd", "conf" },
        { "rbd:p/i:id=admin", "id" },
        { "rbd:p/i:mon_host=10.0.0.1", "mon_host" },
        { "rbd:p/i:keyring=/root/k", "keyring" },
        { "rbd:p/i:key=AQB", "key" },
        { "rbd:p/i:admin_socket=/tmp/x", "admin_socket" },
    };

    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
        RbdName n;
        const char *what = NULL;
        bool has;

        CHECK(rbd_parse_name(cases[i].name, &n, NULL) == 0);
        has = rbd_name_has_config(&n, &what);
        CHECK(has == (cases[i].key != NULL));
        if (has && cases[i].key && strcmp(what, cases[i].key)) {
            fprintf(stderr, "'%s': config key '%s', expected '%s'\n",
                    cases[i].name, what, cases[i].key);
            failures++;
        }
        rbd_name_clear(&n);
    }
}

static void test_secrets(void)
{
    Error *err = NULL;
    char *b64;
    char path[] = "/tmp/test-rbd-names-XXXXXX";
    int fd;

    CHECK(secret_object_add("secret,id=s1,data=hello", &err) == 0);
    b64 = secret_lookup_base64("s1", &err);
    CHECK(b64 && !strcmp(b64, "aGVsbG8="));
    g_free(b64);
    {
        size_t len = 0;
        char *raw = secret_lookup_bytes("s1", &len, &err);
        CHECK(raw && len == 5 && !memcmp(raw, "hello", 5));
        g_free(raw);
    }
    CHECK(secret_object_add("secret,id=s2,data=aGVsbG8=,format=base64",
                            &err) == 0);
    b64 = secret_lookup_base64("s2", &err);
    CHECK(b64 && !strcmp(b64, "aGVsbG8="));
    g_free(b64);

    fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, "key", 3) == 3);
    close(fd);
    {
        g_autofree char *def = g_strdup_printf("secret,id=s3,file=%s", path);
        CHECK(secret_object_add(def, &err) == 0);
    }
    unlink(path);
    b64 = secret_lookup_base64("s3", &err);
    CHECK(b64 && !strcmp(b64, "a2V5"));
    g_free(b64);

    CHECK(secret_object_add("secret,id=s1,data=x", &err) < 0);
    CHECK(err && strstr(error_get_pretty(err), "duplicate"));
    error_free(err);
    err = NULL;
    CHECK(secret_object_add("tls-creds-x509,id=t", &err) < 0);
    error_free(err);
    err = NULL;
    CHECK(secret_object_add("secret,id=s4", &err) < 0);
    error_free(err);
    err = NULL;
    CHECK(secret_object_add("secret,id=s5,data=x,file=/y", &err) < 0);
    error_free(err);
    err = NULL;
    CHECK(secret_object_add("secret,id=s6,data=!!,format=base64", &err) < 0);
    error_free(err);
    err = NULL;
    CHECK(secret_object_add("secret,id=s7,file=/nonexistent/x", &err) < 0);
    error_free(err);
    err = NULL;
    CHECK(secret_lookup_base64("nope", &err) == NULL);
    CHECK(err && strstr(error_get_pretty(err), "No secret with id 'nope'"));
    error_free(err);
    secret_clear_all();
}

int main(void)
{
    test_names();
    test_has_config();
    test_secrets();
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("ok\n");
    return 0;
}
