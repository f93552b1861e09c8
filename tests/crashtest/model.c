/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * crashtest's model: recognisable cell patterns, the history of guest writes
 * and flushes, and the rule for what a cell may hold after a crash.
 */
#include "crashtest.h"

/* ---- cell patterns ---- */

uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/*
 * A cell names its writer and its place: value (4 bytes, little-endian),
 * disk cell number (6 bytes), 6 bytes of a hash of both. A zero value is
 * all zeroes.
 */
void cell_fill(uint8_t *p, uint32_t value, int64_t disk_cell)
{
    uint64_t at = (uint64_t)disk_cell & 0xffffffffffffull;
    uint64_t h = mix64(((uint64_t)value << 48) ^ at);

    if (value == ID_ZERO) {
        memset(p, 0, CELL);
        return;
    }
    for (int i = 0; i < 4; i++) {
        p[i] = value >> (8 * i);
    }
    for (int i = 0; i < 6; i++) {
        p[4 + i] = at >> (8 * i);
        p[10 + i] = h >> (8 * i);
    }
}

void fill_range(uint8_t *buf, uint32_t value, int64_t offset, int64_t len)
{
    for (int64_t pos = 0; pos < len; pos += CELL) {
        cell_fill(buf + pos, value, (offset + pos) / CELL);
    }
}

int64_t cell_decode(const uint8_t *p, int64_t disk_cell, int64_t *where)
{
    uint8_t want[CELL];
    uint32_t value = 0;
    uint64_t at = 0;

    if (buffer_is_zero(p, CELL)) {
        return ID_ZERO;
    }
    for (int i = 0; i < 4; i++) {
        value |= (uint32_t)p[i] << (8 * i);
    }
    for (int i = 0; i < 6; i++) {
        at |= (uint64_t)p[4 + i] << (8 * i);
    }
    cell_fill(want, value, (int64_t)at);
    if (value == ID_ZERO || memcmp(want, p, CELL)) {
        return -1;
    }
    if (at != ((uint64_t)disk_cell & 0xffffffffffffull)) {
        *where = (int64_t)at;
        return -2;
    }
    return value;
}

/* ---- layout ---- */

int64_t layout_cell(const Layout *l, int64_t offset)
{
    for (int i = 0; i < l->nwin; i++) {
        const Window *w = &l->win[i];
        if (offset >= w->offset && offset < w->offset + w->len) {
            return w->first_cell + (offset - w->offset) / CELL;
        }
    }
    return -1;
}

int64_t layout_cell_offset(const Layout *l, int64_t cell)
{
    for (int i = 0; i < l->nwin; i++) {
        const Window *w = &l->win[i];
        if (cell >= w->first_cell && cell < w->first_cell + w->len / CELL) {
            return w->offset + (cell - w->first_cell) * CELL;
        }
    }
    return -1;
}

/* ---- model ---- */

uint32_t model_initial(const Model *m, int64_t cell)
{
    const Layout *l = m->layout;
    if (l->grow && cell >= l->win[l->nwin - 1].first_cell) {
        return ID_ZERO;
    }
    return ID_INITIAL;
}

uint32_t model_value(const Model *m, uint32_t id)
{
    if (id < ID_FIRST_WRITE) {
        return id;
    }
    return g_array_index(m->writes, WriteRec, id - ID_FIRST_WRITE).zero
           ? ID_ZERO : id;
}

void model_init(Model *m, const Layout *l, bool writethrough)
{
    memset(m, 0, sizeof(*m));
    m->layout = l;
    m->writethrough = writethrough;
    m->cur = g_new(uint32_t, l->ncells);
    for (int64_t c = 0; c < l->ncells; c++) {
        m->cur[c] = model_initial(m, c);
    }
    m->writes = g_array_new(FALSE, FALSE, sizeof(WriteRec));
    m->sizes = g_array_new(FALSE, FALSE, sizeof(SizeRec));
    m->initial_size = m->cur_size = l->size;
}

void model_free(Model *m)
{
    g_free(m->cur);
    g_array_free(m->writes, TRUE);
    g_array_free(m->sizes, TRUE);
}

uint32_t model_issue_write(Model *m, int64_t offset, int64_t len, bool zero)
{
    int64_t first = layout_cell(m->layout, offset);
    WriteRec w = { .zero = zero, .state = W_ISSUED, .first = first,
                   .end = first + len / CELL };

    assert(first >= 0 && len % CELL == 0);
    g_array_append_val(m->writes, w);
    return ID_FIRST_WRITE + m->writes->len - 1;
}

static WriteRec *model_write(const Model *m, uint32_t id)
{
    return &g_array_index(m->writes, WriteRec, id - ID_FIRST_WRITE);
}

void model_ack_write(Model *m, uint32_t id)
{
    WriteRec *w = model_write(m, id);

    w->state = W_ACKED;
    w->ack_order = ++m->ack_counter;
    for (int64_t c = w->first; c < w->end; c++) {
        m->cur[c] = id;
    }
}

void model_fail_write(Model *m, uint32_t id)
{
    model_write(m, id)->state = W_FAILED;
}

uint64_t model_flush_issued(const Model *m)
{
    return m->ack_counter;
}

void model_flush_done(Model *m, uint64_t covered)
{
    m->durable_upto = MAX(m->durable_upto, covered);
}

guint model_resize_issued(Model *m, int64_t size)
{
    SizeRec r = { .size = size };

    g_array_append_val(m->sizes, r);
    return m->sizes->len - 1;
}

void model_resize_done(Model *m, guint idx)
{
    SizeRec *r = &g_array_index(m->sizes, SizeRec, idx);

    r->ack_order = ++m->ack_counter;
    m->cur_size = r->size;
}

static bool model_durable(const Model *m, uint64_t ack_order)
{
    return m->all_durable || ack_order <= m->durable_upto;
}

/*
 * Sizes between the durable size and any size set since: a grow of the file
 * below may not land while a later write into the grown part does, which
 * extends the file to that write's end (raw's virtual size is the file's).
 * A truncate in flight at the cut counts as set.
 */
bool model_allows_size(const Model *m, int64_t size, int64_t *lo,
                       int64_t *hi)
{
    int64_t stable = m->initial_size;
    guint first_pending = 0;

    for (guint i = 0; i < m->sizes->len; i++) {
        const SizeRec *r = &g_array_index(m->sizes, SizeRec, i);
        if (r->ack_order && model_durable(m, r->ack_order)) {
            stable = r->size;
            first_pending = i + 1;
        }
    }
    *lo = *hi = stable;
    for (guint i = first_pending; i < m->sizes->len; i++) {
        const SizeRec *r = &g_array_index(m->sizes, SizeRec, i);
        *lo = MIN(*lo, r->size);
        *hi = MAX(*hi, r->size);
    }
    return size >= *lo && size <= *hi;
}

/* ---- what a cell may hold after the crash ---- */

/*
 * Writes to one cell never overlap in time (the workload keeps overlapping
 * writes apart), so they are ordered. The floor is the last durable one
 * (acknowledged before a completed flush was issued, or acknowledged at all
 * in writethrough modes): the cell holds its value or that of any later
 * write, acknowledged or not. Never an earlier one, never anything else.
 */
static bool write_durable(const Model *m, const WriteRec *w)
{
    return w->state == W_ACKED &&
           (m->writethrough || model_durable(m, w->ack_order));
}

void floor_build(const Model *m, Floor *f)
{
    int64_t n = m->layout->ncells;

    f->floor = g_new(uint32_t, n);
    f->zero_after = g_new0(uint32_t, n);
    for (int64_t c = 0; c < n; c++) {
        f->floor[c] = model_initial(m, c);
    }
    for (guint i = 0; i < m->writes->len; i++) {
        const WriteRec *w = &g_array_index(m->writes, WriteRec, i);
        uint32_t id = ID_FIRST_WRITE + i;
        bool durable = write_durable(m, w);
        for (int64_t c = w->first; c < w->end; c++) {
            if (durable) {
                f->floor[c] = id;
            }
            if (w->zero) {
                f->zero_after[c] = id;
            }
        }
    }
}

void floor_free(Floor *f)
{
    g_free(f->floor);
    g_free(f->zero_after);
}

bool floor_allows(const Model *m, const Floor *f, int64_t cell,
                  uint32_t value)
{
    uint32_t floor = f->floor[cell];

    if (value == model_value(m, floor)) {
        return true;
    }
    if (value == ID_ZERO) {
        return f->zero_after[cell] > floor;
    }
    if (value < ID_FIRST_WRITE || value - ID_FIRST_WRITE >= m->writes->len) {
        return false;
    }
    const WriteRec *w = model_write(m, value);
    return !w->zero && value > floor && cell >= w->first && cell < w->end;
}

char *floor_describe(const Model *m, const Floor *f, int64_t cell)
{
    GString *s = g_string_new(NULL);
    uint32_t floor = f->floor[cell];

    if (floor < ID_FIRST_WRITE) {
        g_string_append(s, floor == ID_ZERO ? "durable zeroes"
                                            : "durable initial data");
    } else {
        g_string_append_printf(s, "durable write %u%s", floor,
                               model_write(m, floor)->zero ? " (zero)" : "");
    }
    for (guint i = floor < ID_FIRST_WRITE ? 0 : floor - ID_FIRST_WRITE + 1;
         i < m->writes->len; i++) {
        const WriteRec *w = &g_array_index(m->writes, WriteRec, i);
        if (cell >= w->first && cell < w->end) {
            g_string_append_printf(s, ", then write %u%s%s",
                                   ID_FIRST_WRITE + i, w->zero ? " (zero)" : "",
                                   w->state == W_ACKED ? "" : " (not acked)");
        }
    }
    return g_string_free(s, FALSE);
}
