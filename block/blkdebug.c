/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * blkdebug: a filter for tests that fails requests with a chosen errno when
 * a named event happens. Events are the requests themselves ("read",
 * "write", "flush", "zero", "discard", "truncate") and whatever format
 * drivers announce with BLKDBG_EVENT ("bitmap_update", "journal_write", ...):
 * a matching rule becomes active (replacing the rules armed by earlier
 * events, QEMU's) and every later request through this node fails until
 * another event replaces it (QEMU's); once=on removes it after one
 * failure, only-next=on (ours) disarms it until its event happens again.
 * Rules of request events fail only the request that raised them.
 *
 * Name: blkdebug:RULES_FILE:IMAGE (RULES_FILE may be empty), or options
 * config=, image= (or QEMU's x-image=), image.* for the image node (e.g.
 * image.driver=qcow2), and one inline rule with event=, errno=, once=,
 * offset=. align= and max-transfer= impose request limits (QEMU's).
 *
 * Rules file (ini style):
 *   [inject-error]
 *   event = "write"      # required
 *   errno = "5"          # default EIO
 *   once = "on"          # remove the rule after it fired once
 *   only-next = "on"     # ours: each event fails only the next request
 *   offset = "65536"     # only requests touching this byte
 *   sector = "128"       # QEMU's spelling: offset = sector * 512
 *   immediately = "on"   # accepted (QEMU's); failures are always at once
 */
#include "block_int.h"
#include "util/cutils.h"

/* QEMU's BlkdebugIOType: which requests an error rule may fail. */
enum {
    BLKDEBUG_IO_READ,
    BLKDEBUG_IO_WRITE,
    BLKDEBUG_IO_WRITE_ZEROES,
    BLKDEBUG_IO_DISCARD,
    BLKDEBUG_IO_FLUSH,
    BLKDEBUG_IO_BLOCK_STATUS,
    BLKDEBUG_IO__MAX,
};

static const char *const blkdebug_iotypes[BLKDEBUG_IO__MAX] = {
    "read", "write", "write-zeroes", "discard", "flush", "block-status",
};

typedef struct BlkdebugRule {
    char *event;
    int error;
    bool once;
    bool only_next;              /* ours: disarmed after one failure */
    int64_t offset;              /* -1: any */
    bool active;                 /* event seen, waiting for a request */
    int state;                   /* only in this state; 0: any */
    uint32_t iotype_mask;        /* requests it may fail */
    bool set_state;              /* a [set-state] rule: no error */
    int new_state;               /* its state after the event */
} BlkdebugRule;

typedef struct BlkdebugBreak {
    char *event, *tag;
} BlkdebugBreak;

typedef struct BlkdebugSuspended {
    char *tag;
    Coroutine *co;
} BlkdebugSuspended;

/* Largest align= and max-transfer= (an unaligned request allocates two
 * alignment units of bounce buffer). */
#define BLKDEBUG_MAX_LIMIT (64 * MiB)

typedef struct BDRVBlkdebugState {
    uint64_t align;              /* 0: the image's own */
    uint64_t max_transfer;       /* 0: the image's own */
    uint64_t opt_write_zero;     /* opt-write-zero=, 0: the image's own */
    uint64_t max_write_zero;     /* and so on */
    uint64_t opt_discard;
    uint64_t max_discard;
    GPtrArray *rules;            /* of BlkdebugRule * */
    GPtrArray *breaks;           /* of BlkdebugBreak * */
    GPtrArray *suspended;        /* of BlkdebugSuspended * */
    int state;                   /* QEMU's state machine; starts at 1 */
    uint64_t flushed_gen;        /* write_gen at the last good flush */
    char *config_file;           /* the rules file read, or NULL */
} BDRVBlkdebugState;

static const QemuOptDesc blkdebug_open_opts[] = {
    { "config", QEMU_OPT_STRING, "Path to the rules file" },
    { "image", QEMU_OPT_STRING, "The image to open below the filter" },
    { "x-image", QEMU_OPT_STRING, "The image to open below the filter" },
    { "align", QEMU_OPT_SIZE, "Required alignment in bytes" },
    { "max-transfer", QEMU_OPT_SIZE, "Maximum transfer size in bytes" },
    { "opt-write-zero", QEMU_OPT_SIZE,
      "Optimum write zero alignment in bytes" },
    { "max-write-zero", QEMU_OPT_SIZE, "Maximum write zero size in bytes" },
    { "opt-discard", QEMU_OPT_SIZE, "Optimum discard alignment in bytes" },
    { "max-discard", QEMU_OPT_SIZE, "Maximum discard size in bytes" },
    { "event", QEMU_OPT_STRING, "Inline rule: event that triggers it" },
    { "errno", QEMU_OPT_NUMBER, "Inline rule: error to return" },
    { "once", QEMU_OPT_BOOL, "Inline rule: fire only once" },
    { "offset", QEMU_OPT_SIZE, "Inline rule: only at this byte offset" },
    { NULL }
};

/* "image.*" opens the image; "inject-error.N.*" and "set-state.N.*" are
 * QEMU's rule lists (json: arrays), read by blkdebug_open. */
static const char *const blkdebug_child_prefixes[] = {
    "image", "inject-error", "set-state", NULL
};

static void blkdebug_rule_free(gpointer p)
{
    BlkdebugRule *r = p;
    g_free(r->event);
    g_free(r);
}

static void blkdebug_break_free(gpointer p)
{
    BlkdebugBreak *b = p;
    g_free(b->event);
    g_free(b->tag);
    g_free(b);
}

static char *blkdebug_unquote(char *v)
{
    v = g_strstrip(v);
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v[n - 1] = '\0';
        v++;
    }
    return v;
}

/* QEMU's event names for the request events are accepted too. */
static const char *blkdebug_alias(const char *event)
{
    static const char *const aliases[][2] = {
        { "flush_to_disk", "flush" }, { "flush_to_os", "flush" },
        { "pwritev_zero", "zero" },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(aliases); i++) {
        if (!strcmp(event, aliases[i][0])) {
            return aliases[i][1];
        }
    }
    return event;
}

/* A rule's state= or new_state= (a small non-negative number). */
static int blkdebug_parse_state(const char *key, const char *v, int *out,
                                Error **errp)
{
    int64_t n = 0;

    if (v && (qemu_strtoi64(v, NULL, 0, &n) < 0 || n < 0 || n > INT_MAX)) {
        error_setg(errp, "blkdebug: invalid %s '%s'", key, v);
        return -EINVAL;
    }
    *out = (int)n;
    return 0;
}

static int blkdebug_parse_iotype(const char *v, uint32_t *mask, Error **errp)
{
    if (!v) {
        /* QEMU's default: every type but block-status. */
        *mask = ((1u << BLKDEBUG_IO__MAX) - 1) &
                ~(1u << BLKDEBUG_IO_BLOCK_STATUS);
        return 0;
    }
    for (unsigned i = 0; i < BLKDEBUG_IO__MAX; i++) {
        if (!strcmp(v, blkdebug_iotypes[i])) {
            *mask = 1u << i;
            return 0;
        }
    }
    error_setg(errp, "blkdebug: invalid iotype '%s'", v);
    return -EINVAL;
}

/* A [set-state] rule: event (in state, 0: any) moves to new_state. */
static int blkdebug_add_set_state(BDRVBlkdebugState *s, const char *event,
                                  const char *state, const char *new_state,
                                  Error **errp)
{
    BlkdebugRule *r;
    int st, nst;

    if (!event || !*event) {
        error_setg(errp, "blkdebug: rule needs an 'event'");
        return -EINVAL;
    }
    if (blkdebug_parse_state("state", state, &st, errp) < 0 ||
        blkdebug_parse_state("new_state", new_state, &nst, errp) < 0) {
        return -EINVAL;
    }
    r = g_new0(BlkdebugRule, 1);
    r->event = g_strdup(blkdebug_alias(event));
    r->offset = -1;
    r->state = st;
    r->set_state = true;
    r->new_state = nst;
    g_ptr_array_add(s->rules, r);
    return 0;
}

static void blkdebug_debug_event(BlockDriverState *bs, const char *event);

static int blkdebug_add_rule(BDRVBlkdebugState *s, const char *event,
                             const char *err, const char *once,
                             const char *only_next, const char *offset,
                             const char *state, const char *iotype,
                             Error **errp)
{
    bool n = false;

    BlkdebugRule *r;
    int64_t e = EIO;
    bool o = false;
    uint64_t off = 0;
    uint32_t mask;
    int st;

    if (!event || !*event) {
        error_setg(errp, "blkdebug: rule needs an 'event'");
        return -EINVAL;
    }
    if (blkdebug_parse_state("state", state, &st, errp) < 0 ||
        blkdebug_parse_iotype(iotype, &mask, errp) < 0) {
        return -EINVAL;
    }
    if (err && (qemu_strtoi64(err, NULL, 0, &e) < 0 || e <= 0 ||
                e > 4095)) {
        error_setg(errp, "blkdebug: invalid errno '%s'", err);
        return -EINVAL;
    }
    if (once && !qemu_parse_bool(once, &o)) {
        error_setg(errp, "blkdebug: invalid value for 'once': '%s'", once);
        return -EINVAL;
    }
    if (only_next && !qemu_parse_bool(only_next, &n)) {
        error_setg(errp, "blkdebug: invalid value for 'only-next': '%s'",
                   only_next);
        return -EINVAL;
    }
    if (offset && qemu_strtosz(offset, NULL, &off) < 0) {
        error_setg(errp, "blkdebug: invalid offset '%s'", offset);
        return -EINVAL;
    }
    event = blkdebug_alias(event);
    r = g_new0(BlkdebugRule, 1);
    r->event = g_strdup(event);
    r->error = (int)e;
    r->once = o;
    r->only_next = n;
    r->offset = offset ? (int64_t)off : -1;
    r->state = st;
    r->iotype_mask = mask;
    g_ptr_array_add(s->rules, r);
    return 0;
}

typedef struct RuleText {
    char *event, *err, *once, *only_next, *offset, *sector, *immediately;
    char *state, *new_state, *iotype;
} RuleText;

enum { SECTION_NONE, SECTION_INJECT, SECTION_SET_STATE };

static void blkdebug_text_free(RuleText *t)
{
    g_free(t->event);
    g_free(t->err);
    g_free(t->once);
    g_free(t->only_next);
    g_free(t->offset);
    g_free(t->sector);
    g_free(t->immediately);
    g_free(t->state);
    g_free(t->new_state);
    g_free(t->iotype);
    memset(t, 0, sizeof(*t));
}

/* Add the rule of one section (or one QEMU option list element). */
static int blkdebug_flush_section(BDRVBlkdebugState *s, RuleText *t,
                                  int section, Error **errp)
{
    char *offset = t->offset;
    uint64_t sector;
    bool b;
    int ret = 0;

    if (section == SECTION_INJECT && t->sector) {
        if (qemu_strtou64(t->sector, NULL, 0, &sector) < 0 ||
            sector > INT64_MAX / BDRV_SECTOR_SIZE) {
            error_setg(errp, "blkdebug: invalid sector '%s'", t->sector);
            ret = -EINVAL;
        } else if (!offset) {
            offset = g_strdup_printf("%" PRIu64,
                                     (uint64_t)(sector * BDRV_SECTOR_SIZE));
        }
    }
    if (ret == 0 && section == SECTION_INJECT && t->immediately &&
        !qemu_parse_bool(t->immediately, &b)) {
        error_setg(errp, "blkdebug: invalid value for 'immediately': '%s'",
                   t->immediately);
        ret = -EINVAL;
    }
    if (ret == 0 && section == SECTION_INJECT) {
        ret = blkdebug_add_rule(s, t->event, t->err, t->once, t->only_next,
                                offset, t->state, t->iotype, errp);
    } else if (ret == 0 && section == SECTION_SET_STATE) {
        ret = blkdebug_add_set_state(s, t->event, t->state, t->new_state,
                                     errp);
    }
    if (offset != t->offset) {
        g_free(offset);
    }
    blkdebug_text_free(t);
    return ret;
}

/* The slot of a key in a section of kind section, or NULL: unknown. */
static char **blkdebug_slot(RuleText *t, int section, const char *key)
{
    if (!strcmp(key, "event")) {
        return &t->event;
    }
    if (!strcmp(key, "state")) {
        return &t->state;
    }
    if (section == SECTION_SET_STATE) {
        return !strcmp(key, "new_state") ? &t->new_state : NULL;
    }
    return !strcmp(key, "errno") ? &t->err :
           !strcmp(key, "once") ? &t->once :
           !strcmp(key, "only-next") ? &t->only_next :
           !strcmp(key, "offset") ? &t->offset :
           !strcmp(key, "sector") ? &t->sector :
           !strcmp(key, "iotype") ? &t->iotype :
           !strcmp(key, "immediately") ? &t->immediately : NULL;
}

static int blkdebug_read_config(BDRVBlkdebugState *s, const char *path,
                                Error **errp)
{
    char *text = NULL;
    GError *gerr = NULL;
    RuleText t = { 0 };
    int section = SECTION_NONE;
    int ret = 0;

    FILE *f = fopen(path, "r");
    if (!f) {
        int err = errno;
        error_setg_errno(errp, err, "Could not read blkdebug config file");
        return -err;
    }
    fclose(f);
    if (!g_file_get_contents(path, &text, NULL, &gerr)) {
        error_setg(errp, "Could not read blkdebug config file: %s",
                   gerr->message);
        g_error_free(gerr);
        return -EIO;
    }
    char **lines = g_strsplit(text, "\n", -1);
    for (int i = 0; lines[i] && ret == 0; i++) {
        char *line = g_strstrip(lines[i]);
        if (!*line || line[0] == '#' || line[0] == ';') {
            continue;
        }
        if (line[0] == '[') {
            ret = blkdebug_flush_section(s, &t, section, errp);
            if (!strcmp(line, "[inject-error]")) {
                section = SECTION_INJECT;
            } else if (!strcmp(line, "[set-state]")) {
                section = SECTION_SET_STATE;
            } else if (ret == 0) {
                error_setg(errp, "blkdebug: %s:%d: unknown section %s", path,
                           i + 1, line);
                ret = -EINVAL;
            }
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq || section == SECTION_NONE) {
            error_setg(errp, "blkdebug: %s:%d: expected 'key = value' in an "
                       "[inject-error] or [set-state] section", path, i + 1);
            ret = -EINVAL;
            break;
        }
        *eq = '\0';
        char *key = g_strstrip(line);
        char *val = blkdebug_unquote(eq + 1);
        char **slot = blkdebug_slot(&t, section, key);
        if (!slot) {
            error_setg(errp, "blkdebug: %s:%d: unknown key '%s'", path, i + 1,
                       key);
            ret = -EINVAL;
            break;
        }
        g_free(*slot);
        *slot = g_strdup(val);
    }
    if (ret == 0) {
        ret = blkdebug_flush_section(s, &t, section, errp);
    } else {
        blkdebug_text_free(&t);
    }
    g_strfreev(lines);
    g_free(text);
    return ret;
}

/*
 * QEMU's rule lists as options: inject-error.N.KEY and set-state.N.KEY
 * (from a json: name's arrays), N counting from 0.
 */
static int blkdebug_option_rules(BDRVBlkdebugState *s, QemuOpts *options,
                                 Error **errp)
{
    static const struct {
        const char *prefix;
        int section;
    } lists[] = {
        { "inject-error.", SECTION_INJECT },
        { "set-state.", SECTION_SET_STATE },
    };

    for (unsigned l = 0; l < ARRAY_SIZE(lists); l++) {
        size_t plen = strlen(lists[l].prefix);
        uint64_t max = 0;
        bool any = false;

        /* Check every key first: unknown ones are refused (QEMU's). */
        for (size_t i = 0; i < qemu_opts_count(options); i++) {
            const char *name, *value, *dot;
            uint64_t n;
            RuleText t = { 0 };

            qemu_opts_nth(options, i, &name, &value);
            if (strncmp(name, lists[l].prefix, plen)) {
                continue;
            }
            if (qemu_strtou64(name + plen, &dot, 10, &n) < 0 || *dot != '.' ||
                n >= 4096 || !blkdebug_slot(&t, lists[l].section, dot + 1)) {
                error_setg(errp, "Block protocol 'blkdebug' doesn't support "
                           "the option '%s'", name);
                return -EINVAL;
            }
            max = MAX(max, n);
            any = true;
        }
        for (uint64_t n = 0; any && n <= max; n++) {
            RuleText t = { 0 };
            bool seen = false;

            for (size_t i = 0; i < qemu_opts_count(options); i++) {
                const char *name, *value, *dot;
                uint64_t k;

                qemu_opts_nth(options, i, &name, &value);
                if (strncmp(name, lists[l].prefix, plen) ||
                    qemu_strtou64(name + plen, &dot, 10, &k) < 0 || k != n) {
                    continue;
                }
                char **slot = blkdebug_slot(&t, lists[l].section, dot + 1);
                g_free(*slot);
                *slot = g_strdup(value);
                seen = true;
            }
            if (seen) {
                int ret = blkdebug_flush_section(s, &t, lists[l].section,
                                                 errp);
                if (ret < 0) {
                    return ret;
                }
            }
        }
    }
    return 0;
}

/* align= and max-transfer= (QEMU's checks and messages). */
static int blkdebug_parse_limits(BDRVBlkdebugState *s, QemuOpts *options,
                                 Error **errp)
{
    s->align = qemu_opt_get_size(options, "align", 0);
    if (s->align && (s->align > BLKDEBUG_MAX_LIMIT ||
                     (s->align & (s->align - 1)))) {
        error_setg(errp, "Cannot meet constraints with align %" PRIu64,
                   s->align);
        return -EINVAL;
    }
    s->max_transfer = qemu_opt_get_size(options, "max-transfer", 0);
    if (s->max_transfer && (s->max_transfer > BLKDEBUG_MAX_LIMIT ||
                            !QEMU_IS_ALIGNED(s->max_transfer,
                                             MAX(s->align, 1)))) {
        error_setg(errp, "Cannot meet constraints with max-transfer %" PRIu64,
                   s->max_transfer);
        return -EINVAL;
    }
    /* Zero write and discard limits: a multiple of the alignment (the
     * largest one of the optimum too), below 2 GiB; no power of two
     * needed. */
    const struct {
        const char *name;
        uint64_t *val;
        const uint64_t *unit;
    } lim[] = {
        { "opt-write-zero", &s->opt_write_zero, NULL },
        { "max-write-zero", &s->max_write_zero, &s->opt_write_zero },
        { "opt-discard", &s->opt_discard, NULL },
        { "max-discard", &s->max_discard, &s->opt_discard },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(lim); i++) {
        uint64_t v = qemu_opt_get_size(options, lim[i].name, 0);
        uint64_t unit = MAX(MAX(s->align, 1), lim[i].unit ? *lim[i].unit : 0);
        if (v && (v >= INT_MAX || !QEMU_IS_ALIGNED(v, unit))) {
            error_setg(errp, "Cannot meet constraints with %s %" PRIu64,
                       lim[i].name, v);
            return -EINVAL;
        }
        *lim[i].val = v;
    }
    return 0;
}

/* The image.* options: for the node under the filter (image.driver=...). */
static QemuOpts *blkdebug_image_opts(QemuOpts *options)
{
    QemuOpts *opts = NULL;

    for (size_t i = 0; i < qemu_opts_count(options); i++) {
        const char *name, *value;

        qemu_opts_nth(options, i, &name, &value);
        if (g_str_has_prefix(name, "image.")) {
            if (!opts) {
                opts = qemu_opts_new();
            }
            qemu_opt_set(opts, name + strlen("image."), value);
        }
    }
    return opts;
}

static int coroutine_fn blkdebug_open(BlockDriverState *bs, QemuOpts *options,
                                      int flags, Error **errp)
{
    BDRVBlkdebugState *s = bs->opaque;
    const char *config = qemu_opt_get(options, "config");
    const char *image = qemu_opt_get(options, "image");
    QemuOpts *image_opts = blkdebug_image_opts(options);
    char *cfg_from_name = NULL;
    const char *rest;
    int ret;

    s->rules = g_ptr_array_new_with_free_func(blkdebug_rule_free);
    s->breaks = g_ptr_array_new_with_free_func(blkdebug_break_free);
    s->suspended = g_ptr_array_new();
    s->state = 1;
    if (!image) {
        image = qemu_opt_get(options, "x-image");
    }
    if (strstart(bs->filename, "blkdebug:", &rest)) {
        const char *colon = strchr(rest, ':');
        if (!colon) {
            error_setg(errp, "blkdebug: expected blkdebug:RULES:IMAGE");
            ret = -EINVAL;
            goto fail;
        }
        cfg_from_name = g_strndup(rest, colon - rest);
        if (!config && *cfg_from_name) {
            config = cfg_from_name;
        }
        if (!image) {
            image = colon + 1;
        }
    } else if (!image && *bs->filename) {
        image = bs->filename;
    }
    if ((!image || !*image) && !image_opts) {
        error_setg(errp, "blkdebug: no image given");
        ret = -EINVAL;
        goto fail;
    }
    ret = blkdebug_parse_limits(s, options, errp);
    if (ret < 0) {
        goto fail;
    }
    if (config) {
        s->config_file = g_strdup(config);
        ret = blkdebug_read_config(s, config, errp);
        if (ret < 0) {
            goto fail;
        }
    }
    ret = blkdebug_option_rules(s, options, errp);
    if (ret < 0) {
        goto fail;
    }
    if (qemu_opt_has(options, "event")) {
        ret = blkdebug_add_rule(s, qemu_opt_get(options, "event"),
                                qemu_opt_get(options, "errno"),
                                qemu_opt_get(options, "once"), NULL,
                                qemu_opt_get(options, "offset"), NULL, NULL,
                                errp);
        if (ret < 0) {
            goto fail;
        }
    }
    if (image && *image && image_opts &&
        qemu_opt_has(image_opts, "filename")) {
        error_setg(errp, "blkdebug: the image is named twice ('%s' and "
                   "image.filename)", image);
        ret = -EINVAL;
        goto fail;
    }
    bs->file = bdrv_open_child(image && *image ? image : NULL, NULL,
                               image_opts, flags, false, errp);
    if (!bs->file) {
        ret = -EINVAL;
        goto fail;
    }
    qemu_opts_del(image_opts);
    g_free(cfg_from_name);
    /* QEMU's "none" event: its rules are armed from the start. */
    blkdebug_debug_event(bs, "none");
    return 0;

fail:
    qemu_opts_del(image_opts);
    g_free(cfg_from_name);
    g_free(s->config_file);
    s->config_file = NULL;
    g_ptr_array_free(s->rules, TRUE);
    g_ptr_array_free(s->breaks, TRUE);
    g_ptr_array_free(s->suspended, TRUE);
    s->rules = NULL;
    return ret;
}

static void blkdebug_refresh_limits(BlockDriverState *bs, Error **errp)
{
    BDRVBlkdebugState *s = bs->opaque;

    if (s->align > bs->bl.request_alignment) {
        bs->bl.request_alignment = s->align;
        bs->bl.min_mem_alignment = MAX(bs->bl.min_mem_alignment,
                                       (uint32_t)MIN(s->align, 4096));
    }
    if (s->max_transfer) {
        bs->bl.max_transfer = QEMU_ALIGN_DOWN(s->max_transfer,
                                              bs->bl.request_alignment);
        if (!bs->bl.max_transfer) {
            error_setg(errp, "Cannot meet constraints with max-transfer %"
                       PRIu64, s->max_transfer);
        }
    }
    if (s->opt_write_zero) {
        bs->bl.pwrite_zeroes_alignment = s->opt_write_zero;
    }
    if (s->max_write_zero) {
        bs->bl.max_pwrite_zeroes = s->max_write_zero;
    }
    if (s->opt_discard) {
        bs->bl.pdiscard_alignment = s->opt_discard;
    }
    if (s->max_discard) {
        bs->bl.max_pdiscard = s->max_discard;
    }
}

static void coroutine_fn blkdebug_close(BlockDriverState *bs)
{
    BDRVBlkdebugState *s = bs->opaque;
    g_free(s->config_file);
    if (s->rules) {
        g_ptr_array_free(s->rules, TRUE);
        g_ptr_array_free(s->breaks, TRUE);
        /* The layer drained us: nothing can still be suspended. */
        assert(s->suspended->len == 0);
        g_ptr_array_free(s->suspended, TRUE);
    }
}

static int blkdebug_resume_tag(BDRVBlkdebugState *s, const char *tag)
{
    for (guint i = 0; i < s->suspended->len; i++) {
        BlkdebugSuspended *sus = g_ptr_array_index(s->suspended, i);
        if (!strcmp(sus->tag, tag)) {
            if (qemu_in_coroutine()) {
                aio_co_wake(sus->co);
            } else {
                qemu_coroutine_enter(sus->co);
            }
            return 0;
        }
    }
    return -ENOENT;
}

/* Suspend the calling request until blkdebug_resume(tag). */
static void coroutine_fn blkdebug_suspend(BDRVBlkdebugState *s,
                                          const char *tag)
{
    BlkdebugSuspended *sus = g_new0(BlkdebugSuspended, 1);
    sus->tag = g_strdup(tag);
    sus->co = qemu_coroutine_self();
    g_ptr_array_add(s->suspended, sus);
    /* On stdout, as QEMU's blkdebug prints them (iotests compare them). */
    printf("blkdebug: Suspended request '%s'\n", tag);
    qemu_coroutine_yield();
    printf("blkdebug: Resuming request '%s'\n", tag);
    g_ptr_array_remove(s->suspended, sus);
    g_free(sus->tag);
    g_free(sus);
}

static void blkdebug_debug_event(BlockDriverState *bs, const char *event)
{
    BDRVBlkdebugState *s = bs->opaque;
    int new_state = s->state;
    bool injected = false;

    /* Rules bound to a state see the state before this event (QEMU's). An
     * event with error rules makes them the active set: rules armed by
     * earlier events are disarmed (QEMU's). */
    for (guint i = 0; i < s->rules->len; i++) {
        BlkdebugRule *r = g_ptr_array_index(s->rules, i);
        if (strcmp(r->event, event) || (r->state && r->state != s->state)) {
            continue;
        }
        if (r->set_state) {
            new_state = r->new_state;
            continue;
        }
        if (!injected) {
            for (guint j = 0; j < s->rules->len; j++) {
                BlkdebugRule *o = g_ptr_array_index(s->rules, j);
                o->active = false;
            }
            injected = true;
        }
        r->active = true;
    }
    s->state = new_state;
    if (!qemu_in_coroutine()) {
        return;
    }
    for (guint i = 0; i < s->breaks->len; i++) {
        BlkdebugBreak *b = g_ptr_array_index(s->breaks, i);
        if (!strcmp(b->event, event)) {
            char *tag = g_strdup(b->tag);
            g_ptr_array_remove_index(s->breaks, i);   /* one-shot */
            blkdebug_suspend(s, tag);
            g_free(tag);
            return;
        }
    }
}

static int blkdebug_breakpoint(BlockDriverState *bs, const char *event,
                               const char *tag)
{
    BDRVBlkdebugState *s = bs->opaque;
    BlkdebugBreak *b = g_new0(BlkdebugBreak, 1);
    b->event = g_strdup(blkdebug_alias(event));
    b->tag = g_strdup(tag);
    g_ptr_array_add(s->breaks, b);
    return 0;
}

static int blkdebug_remove_breakpoint(BlockDriverState *bs, const char *tag)
{
    BDRVBlkdebugState *s = bs->opaque;
    bool found = false;
    for (guint i = 0; i < s->breaks->len;) {
        BlkdebugBreak *b = g_ptr_array_index(s->breaks, i);
        if (!strcmp(b->tag, tag)) {
            g_ptr_array_remove_index(s->breaks, i);
            found = true;
        } else {
            i++;
        }
    }
    /* Removing the breakpoint also lets a request suspended on it go. */
    if (blkdebug_resume_tag(s, tag) == 0) {
        found = true;
    }
    return found ? 0 : -ENOENT;
}

static int blkdebug_resume(BlockDriverState *bs, const char *tag)
{
    return blkdebug_resume_tag(bs->opaque, tag);
}

static bool blkdebug_is_suspended(BlockDriverState *bs, const char *tag)
{
    BDRVBlkdebugState *s = bs->opaque;
    for (guint i = 0; i < s->suspended->len; i++) {
        BlkdebugSuspended *sus = g_ptr_array_index(s->suspended, i);
        if (!strcmp(sus->tag, tag)) {
            return true;
        }
    }
    return false;
}

/* Rules of our request events ("read", ...) fail only the request that
 * raised them. */
static void blkdebug_disarm_request_event(BDRVBlkdebugState *s,
                                          const char *event)
{
    for (guint i = 0; i < s->rules->len; i++) {
        BlkdebugRule *r = g_ptr_array_index(s->rules, i);
        if (!strcmp(r->event, event)) {
            r->active = false;
        }
    }
}

/*
 * Announce the request's own event (event NULL: none), then fail it if an
 * active rule matches its range. Returns 0 or -errno.
 */
static int blkdebug_check(BlockDriverState *bs, const char *event,
                          int iotype, int64_t offset, int64_t bytes)
{
    BDRVBlkdebugState *s = bs->opaque;

    if (event) {
        blkdebug_debug_event(bs, event);
    } else {
        event = "";
    }
    for (guint i = 0; i < s->rules->len; i++) {
        BlkdebugRule *r = g_ptr_array_index(s->rules, i);
        if (!r->active) {
            continue;
        }
        /* iotype= (QEMU's): only these requests (truncate: ours, any). */
        if (iotype >= 0 && !(r->iotype_mask & (1u << iotype))) {
            continue;
        }
        if (r->offset >= 0 && bytes >= 0 &&
            (r->offset < offset || r->offset >= offset + MAX(bytes, 1))) {
            continue;
        }
        int err = r->error;
        if (r->once) {
            g_ptr_array_remove_index(s->rules, i);
        } else if (r->only_next) {
            r->active = false;   /* until its event happens again */
        }
        /* Otherwise it stays armed (QEMU's): every later request it
         * matches fails too, until another event replaces it. */
        blkdebug_disarm_request_event(s, event);
        return -err;
    }
    blkdebug_disarm_request_event(s, event);
    return 0;
}

static int coroutine_fn blkdebug_co_preadv(BlockDriverState *bs,
                                           int64_t offset, int64_t bytes,
                                           QEMUIOVector *qiov,
                                           size_t qiov_offset,
                                           BdrvRequestFlags flags)
{
    int ret = blkdebug_check(bs, "read", BLKDEBUG_IO_READ, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_preadv_part(bs->file, offset, bytes, qiov, qiov_offset,
                               flags);
}

static int coroutine_fn blkdebug_co_pwritev(BlockDriverState *bs,
                                            int64_t offset, int64_t bytes,
                                            QEMUIOVector *qiov,
                                            size_t qiov_offset,
                                            BdrvRequestFlags flags)
{
    int ret = blkdebug_check(bs, "write", BLKDEBUG_IO_WRITE, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwritev_part(bs->file, offset, bytes, qiov, qiov_offset,
                                flags);
}

static int coroutine_fn blkdebug_co_pwrite_zeroes(BlockDriverState *bs,
                                                  int64_t offset,
                                                  int64_t bytes,
                                                  BdrvRequestFlags flags)
{
    /* As QEMU's blkdebug: pieces smaller than the zero granularity are
     * refused, so that the layer's fallback (zero buffers) is tested. */
    if (bytes < (int64_t)MAX(bs->bl.request_alignment,
                             bs->bl.pwrite_zeroes_alignment)) {
        return -ENOTSUP;
    }
    int ret = blkdebug_check(bs, "zero", BLKDEBUG_IO_WRITE_ZEROES, offset,
                             bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pwrite_zeroes(bs->file, offset, bytes, flags);
}

static int coroutine_fn blkdebug_co_pdiscard(BlockDriverState *bs,
                                             int64_t offset, int64_t bytes)
{
    int ret = blkdebug_check(bs, "discard", BLKDEBUG_IO_DISCARD, offset, bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_pdiscard(bs->file, offset, bytes);
}

static int coroutine_fn blkdebug_co_flush(BlockDriverState *bs)
{
    BDRVBlkdebugState *s = bs->opaque;
    uint64_t gen = bdrv_get_write_gen(bs);
    int ret;

    if (gen == s->flushed_gen) {
        /* Nothing written through us since the last flush: QEMU skips
         * its flush to disk, so no rule can fail it (breakpoints still
         * see the event). */
        blkdebug_debug_event(bs, "flush");
        blkdebug_disarm_request_event(s, "flush");
        return 0;
    }
    ret = blkdebug_check(bs, "flush", BLKDEBUG_IO_FLUSH, 0, -1);
    if (ret == 0) {
        s->flushed_gen = gen;
    }
    return ret;
}

static int coroutine_fn blkdebug_co_truncate(BlockDriverState *bs,
                                             int64_t offset, bool exact,
                                             PreallocMode prealloc,
                                             Error **errp)
{
    int ret = blkdebug_check(bs, "truncate", -1, offset, -1);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "blkdebug: injected error");
        return ret;
    }
    return bdrv_co_truncate(bs->file, offset, exact, prealloc, errp);
}

/* QEMU's: block-status queries may fail too (rules with
 * iotype=block-status); the answer is the image's. */
static int coroutine_fn blkdebug_co_block_status(BlockDriverState *bs,
                                                 bool want_zero,
                                                 int64_t offset,
                                                 int64_t bytes, int64_t *pnum,
                                                 int64_t *map,
                                                 BlockDriverState **file)
{
    (void)want_zero;
    int ret = blkdebug_check(bs, NULL, BLKDEBUG_IO_BLOCK_STATUS, offset,
                             bytes);
    if (ret < 0) {
        return ret;
    }
    return bdrv_co_block_status(bs->file, offset, bytes, pnum, map, file);
}

static int64_t blkdebug_getlength(BlockDriverState *bs)
{
    return bdrv_getlength(bs->file);
}

/*
 * Reopening (other flags, e.g. qemu-io's reopen -r) changes nothing here:
 * the rules stay, the image below is reopened by the layer (QEMU's
 * blkdebug does the same).
 */
static int blkdebug_reopen_prepare(BdrvReopenState *state, Error **errp)
{
    (void)state;
    (void)errp;
    return 0;
}

/* Options that change what the node does (QEMU's, and our inline rule):
 * with any of them its name is json:{...}. */
static const char *const blkdebug_strong_opts[] = {
    "config", "inject-error.", "set-state.", "align", "max-transfer",
    "opt-write-zero", "max-write-zero", "opt-discard", "max-discard",
    "event", "errno", "once", "offset", NULL
};

/*
 * QEMU's rule: blkdebug:RULES_FILE:IMAGE names the node when its image has
 * an exact name and nothing but a rules file was given besides.
 */
static char *blkdebug_exact_filename(BlockDriverState *bs, JsonValue *opts,
                                     const char *file_exact)
{
    static const char *const plain[] = { "config", "image", "x-image",
                                         "driver" };
    BDRVBlkdebugState *s = bs->opaque;
    bool has_config = false;

    for (guint i = 0; i < opts->members->len; i++) {
        const JsonValue *m = g_ptr_array_index(opts->members, i);
        bool ok = false;

        for (size_t k = 0; k < ARRAY_SIZE(plain); k++) {
            ok |= !strcmp(m->key, plain[k]);
        }
        has_config |= !strcmp(m->key, "config");
        if (!ok) {
            file_exact = "";
        }
    }
    /* A rules file named by blkdebug:RULES:IMAGE is an option to QEMU. */
    if (s->config_file && !has_config) {
        json_add_str(opts, "config", s->config_file);
    }
    if (!file_exact[0]) {
        return NULL;
    }
    return g_strdup_printf("blkdebug:%s:%s",
                           s->config_file ? s->config_file : "", file_exact);
}

static BlockDriver bdrv_blkdebug = {
    .format_name            = "blkdebug",
    .protocol_name          = "blkdebug",
    .instance_size          = sizeof(BDRVBlkdebugState),
    .is_filter              = true,
    .open_opts              = blkdebug_open_opts,
    .child_prefixes         = blkdebug_child_prefixes,
    .filename_optional      = true,
    .strong_opts            = blkdebug_strong_opts,
    .file_child_name        = "image",
    .bdrv_exact_filename    = blkdebug_exact_filename,

    .bdrv_open              = blkdebug_open,
    .bdrv_close             = blkdebug_close,
    .bdrv_refresh_limits    = blkdebug_refresh_limits,
    .bdrv_reopen_prepare    = blkdebug_reopen_prepare,

    .bdrv_co_preadv         = blkdebug_co_preadv,
    .bdrv_co_pwritev        = blkdebug_co_pwritev,
    .bdrv_co_pwrite_zeroes  = blkdebug_co_pwrite_zeroes,
    .bdrv_co_pdiscard       = blkdebug_co_pdiscard,
    .bdrv_co_flush          = blkdebug_co_flush,
    .bdrv_co_truncate       = blkdebug_co_truncate,
    .bdrv_co_block_status   = blkdebug_co_block_status,
    .bdrv_getlength         = blkdebug_getlength,

    .bdrv_debug_event       = blkdebug_debug_event,
    .bdrv_debug_breakpoint  = blkdebug_breakpoint,
    .bdrv_debug_remove_breakpoint = blkdebug_remove_breakpoint,
    .bdrv_debug_resume      = blkdebug_resume,
    .bdrv_debug_is_suspended = blkdebug_is_suspended,

    .supported_write_flags  = BDRV_REQ_FUA,
    .supported_zero_flags   = BDRV_REQ_MAY_UNMAP | BDRV_REQ_FUA,
};

BLOCK_DRIVER_REGISTER(bdrv_blkdebug)
