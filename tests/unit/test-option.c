/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Unit tests for QemuOpts parsing, validation, typed getters and help output. */
#include "util/option.h"

static const QemuOptDesc create_opts[] = {
    { .name = "size", .type = QEMU_OPT_SIZE, .help = "Virtual disk size" },
    { .name = "backing_file", .type = QEMU_OPT_STRING,
      .help = "File name of a base image" },
    { .name = "lazy", .type = QEMU_OPT_BOOL, .help = "Postpone updates" },
    { .name = "bits", .type = QEMU_OPT_NUMBER, .help = "Width in bits" },
    { NULL }
};

static const QemuOptDesc extra_opts[] = {
    { .name = "a_very_long_option_name", .type = QEMU_OPT_STRING,
      .help = "Long" },
    { .name = "nohelp", .type = QEMU_OPT_STRING },
    { .name = "size", .type = QEMU_OPT_STRING, .help = "duplicate" },
    { NULL }
};

static const QemuOptDesc *const descs[] = { create_opts, NULL };

static QemuOpts *parse_ok(const char *str, const char *implied)
{
    QemuOpts *opts = qemu_opts_new();
    Error *err = NULL;

    g_assert_cmpint(qemu_opts_parse(opts, str, implied, &err), ==, 0);
    g_assert(err == NULL);
    return opts;
}

static void test_parse(void)
{
    QemuOpts *opts = parse_ok("size=1G,backing_file=a,,b.img,lazy,bits=0x10",
                              NULL);
    const char *name, *value;

    g_assert_cmpuint(qemu_opts_count(opts), ==, 4);
    g_assert_cmpstr(qemu_opt_get(opts, "backing_file"), ==, "a,b.img");
    g_assert_cmpstr(qemu_opt_get(opts, "lazy"), ==, "on");
    g_assert(qemu_opt_get_bool(opts, "lazy", false));
    g_assert_cmpuint(qemu_opt_get_size(opts, "size", 0), ==, 1ULL << 30);
    g_assert_cmpuint(qemu_opt_get_number(opts, "bits", 0), ==, 16);
    g_assert(qemu_opt_get(opts, "missing") == NULL);
    g_assert_cmpuint(qemu_opt_get_number(opts, "missing", 77), ==, 77);
    qemu_opts_nth(opts, 0, &name, &value);
    g_assert_cmpstr(name, ==, "size");
    qemu_opts_nth(opts, 3, &name, &value);
    g_assert_cmpstr(name, ==, "bits");
    g_assert_cmpint(qemu_opts_validate(opts, descs, NULL), ==, 0);

    /* A later value replaces an earlier one. */
    g_assert_cmpint(qemu_opts_parse(opts, "size=2M,lazy=off", NULL, NULL),
                    ==, 0);
    g_assert_cmpuint(qemu_opts_count(opts), ==, 4);
    g_assert_cmpuint(qemu_opt_get_size(opts, "size", 0), ==, 2 << 20);
    g_assert(!qemu_opt_get_bool(opts, "lazy", true));
    qemu_opts_del(opts);

    /* Escaped commas at the ends of values and an empty value. */
    opts = parse_ok("a=,,,b=x,,,,y,,,c=", NULL);
    g_assert_cmpstr(qemu_opt_get(opts, "a"), ==, ",");
    g_assert_cmpstr(qemu_opt_get(opts, "b"), ==, "x,,y,");
    g_assert_cmpstr(qemu_opt_get(opts, "c"), ==, "");
    qemu_opts_del(opts);

    opts = parse_ok("", NULL);
    g_assert_cmpuint(qemu_opts_count(opts), ==, 0);
    qemu_opts_del(opts);
}

static void test_implied_key(void)
{
    QemuOpts *opts = parse_ok("my,,file.img,format=raw,ro", "filename");

    g_assert_cmpstr(qemu_opt_get(opts, "filename"), ==, "my,file.img");
    g_assert_cmpstr(qemu_opt_get(opts, "format"), ==, "raw");
    g_assert_cmpstr(qemu_opt_get(opts, "ro"), ==, "on");
    qemu_opts_del(opts);

    /* An explicit first pair is not the implied key. */
    opts = parse_ok("filename=x,other", "filename");
    g_assert_cmpstr(qemu_opt_get(opts, "filename"), ==, "x");
    g_assert_cmpstr(qemu_opt_get(opts, "other"), ==, "on");
    qemu_opts_del(opts);

    /* Without an implied key a bare first element is a flag. */
    opts = parse_ok("flag", NULL);
    g_assert_cmpstr(qemu_opt_get(opts, "flag"), ==, "on");
    qemu_opts_del(opts);
}

static void expect_invalid(const char *str, const char *msg)
{
    QemuOpts *opts = parse_ok(str, NULL);
    Error *err = NULL;

    g_assert_cmpint(qemu_opts_validate(opts, descs, &err), ==, -EINVAL);
    g_assert(err);
    g_assert_cmpstr(error_get_pretty(err), ==, msg);
    error_free(err);
    qemu_opts_del(opts);
}

static void test_validate(void)
{
    const QemuOptDesc *const both[] = { create_opts, extra_opts, NULL };
    QemuOpts *opts;
    Error *err = NULL;

    expect_invalid("size=1G,foo=bar", "Invalid parameter 'foo'");
    expect_invalid("lazy=maybe", "Parameter 'lazy' expects 'on' or 'off'");
    expect_invalid("bits=12x", "Parameter 'bits' expects a number");
    /* "-1" is UINT64_MAX, as QEMU's strtoull-based parser has it. */
    expect_invalid("bits=-x", "Parameter 'bits' expects a number");
    expect_invalid("size=-1",
                   "Parameter 'size' expects a non-negative number below 2^64");
    expect_invalid("size=1Q",
                   "Parameter 'size' expects a non-negative number below 2^64");
    expect_invalid("size=99999999999E",
                   "Parameter 'size' expects a non-negative number below 2^64");

    /* Several tables: a name from any of them is valid. */
    opts = parse_ok("nohelp=1,size=5", NULL);
    g_assert_cmpint(qemu_opts_validate(opts, both, NULL), ==, 0);
    g_assert_cmpint(qemu_opts_validate(opts, descs, &err), ==, -EINVAL);
    g_assert_cmpstr(error_get_pretty(err), ==, "Invalid parameter 'nohelp'");
    error_free(err);
    err = NULL;

    /* check_types ignores unknown names but checks known ones. */
    g_assert_cmpint(qemu_opts_check_types(opts, create_opts, NULL), ==, 0);
    qemu_opt_set(opts, "lazy", "nope");
    g_assert_cmpint(qemu_opts_check_types(opts, create_opts, &err), ==,
                    -EINVAL);
    g_assert_cmpstr(error_get_pretty(err), ==,
                    "Parameter 'lazy' expects 'on' or 'off'");
    error_free(err);
    qemu_opts_del(opts);
}

static void test_set_get(void)
{
    QemuOpts *opts = qemu_opts_new(), *clone, *sub;
    char *v;
    bool b;

    qemu_opt_set_number(opts, "n", 12345678901ULL);
    qemu_opt_set_bool(opts, "b", false);
    qemu_opt_set(opts, "file.filename", "x.img");
    qemu_opt_set(opts, "file.driver", "file");
    qemu_opt_set(opts, "filex", "keep");
    g_assert_cmpstr(qemu_opt_get(opts, "n"), ==, "12345678901");
    g_assert_cmpstr(qemu_opt_get(opts, "b"), ==, "off");
    g_assert(qemu_opt_has(opts, "b"));

    clone = qemu_opts_clone(opts);
    sub = qemu_opts_extract_prefix(opts, "file");
    g_assert(sub);
    g_assert_cmpuint(qemu_opts_count(sub), ==, 2);
    g_assert_cmpstr(qemu_opt_get(sub, "filename"), ==, "x.img");
    g_assert_cmpstr(qemu_opt_get(sub, "driver"), ==, "file");
    g_assert_cmpuint(qemu_opts_count(opts), ==, 3);
    g_assert(qemu_opts_extract_prefix(opts, "file") == NULL);
    g_assert_cmpuint(qemu_opts_count(clone), ==, 5);

    v = qemu_opt_get_del(opts, "n");
    g_assert_cmpstr(v, ==, "12345678901");
    g_free(v);
    g_assert(!qemu_opt_has(opts, "n"));
    g_assert(qemu_opt_get_del(opts, "n") == NULL);
    g_assert(qemu_opt_unset(opts, "b"));
    g_assert(!qemu_opt_unset(opts, "b"));
    g_assert_cmpuint(qemu_opts_count(opts), ==, 1);

    g_assert(qemu_parse_bool("yes", &b) && b);
    g_assert(qemu_parse_bool("true", &b) && b);
    g_assert(qemu_parse_bool("no", &b) && !b);
    g_assert(qemu_parse_bool("false", &b) && !b);
    g_assert(!qemu_parse_bool("1", &b));
    g_assert(is_help_option("help"));
    g_assert(is_help_option("?"));
    g_assert(!is_help_option("helpme"));
    g_assert(!is_help_option(NULL));

    qemu_opts_del(opts);
    qemu_opts_del(clone);
    qemu_opts_del(sub);
}

/* The help layout matches qemu-img create -o help. */
static void test_print_help(void)
{
    const QemuOptDesc *const both[] = { create_opts, extra_opts, NULL };
    static const char expected[] =
        "Supported options:\n"
        "  a_very_long_option_name=<str> - Long\n"
        "  backing_file=<str>     - File name of a base image\n"
        "  bits=<num>             - Width in bits\n"
        "  lazy=<bool (on/off)>   - Postpone updates\n"
        "  nohelp=<str>\n"
        "  size=<size>            - Virtual disk size\n";
    char path[] = "/tmp/test-option-XXXXXX";
    int fd = mkstemp(path), saved;
    char *out;

    g_assert_cmpint(fd, >=, 0);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    dup2(fd, STDOUT_FILENO);
    qemu_opts_print_help("Supported options:", both);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    close(fd);
    g_assert(g_file_get_contents(path, &out, NULL, NULL));
    unlink(path);
    g_assert_cmpstr(out, ==, expected);
    g_free(out);
}

int main(int argc, char **argv)
{
    test_parse();
    test_implied_key();
    test_validate();
    test_set_get();
    test_print_help();
    printf("PASS test-option\n");
    return 0;
}
