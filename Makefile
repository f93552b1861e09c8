# SPDX-License-Identifier: GPL-2.0-or-later
# Build the block library, the tools and the tests. Run ./configure first.

ifeq ($(wildcard config-host.mak),)
$(error Please run ./configure first)
endif
include config-host.mak
SRC_PATH ?= .
vpath %.c $(SRC_PATH)
vpath %.h $(SRC_PATH)
include $(SRC_PATH)/Makefile.objs

QEMU_CFLAGS = $(CFLAGS) -I. -I$(SRC_PATH) -MMD -MP

all: $(tools-y)

%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(QEMU_CFLAGS) -c -o $@ $<

libqemublock.a: $(util-obj-y) $(block-obj-y)
	rm -f $@
	$(AR) rcs $@ $^

# Drivers register themselves from constructors: link the library whole.
LINK_BLOCK = -Wl,--whole-archive libqemublock.a -Wl,--no-whole-archive

qemu-img: qemu-img.o libqemublock.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LINK_BLOCK) $(LIBS)

qemu-io: qemu-io.o qemu-io-cmds.o libqemublock.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LINK_BLOCK) $(LIBS)

qemu-nbd: qemu-nbd.o libqemublock.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LINK_BLOCK) $(LIBS)

tests/unit/%: tests/unit/%.o libqemublock.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LINK_BLOCK) $(LIBS)

check-unit: $(unit-tests-y)
	@$(SRC_PATH)/tests/unit/run-unit-tests $(unit-tests-y)

check-iotests: $(tools-y)
	@cd $(SRC_PATH)/tests/qemu-iotests && \
	  BUILD_DIR=$(CURDIR) ./check -raw -file

check: all $(unit-tests-y) tests/crashtest/crashtest tests/sheepdog/sheepdog-server
	@BUILD_DIR=$(CURDIR) SRC_PATH=$(SRC_PATH) \
	  $(SRC_PATH)/tests/run-all $(unit-tests-y)

# Sanitizer run: a separate out-of-tree ASan+UBSan build running the suite.
check-asan:
	@mkdir -p build-asan && cd build-asan && \
	  $(SRC_PATH)/configure --enable-asan --enable-werror >/dev/null && \
	  $(MAKE) --no-print-directory check

install: all
	install -d $(DESTDIR)$(prefix)/bin
	install -m 755 $(tools-y) $(DESTDIR)$(prefix)/bin

clean:
	rm -f *.o */*.o */*/*.o *.d */*.d */*/*.d libqemublock.a $(tools-y) \
	      tests/crashtest/crashtest \
	      $(unit-tests-y)

distclean: clean
	rm -f config-host.mak config-host.h
	rm -rf build-asan

.PHONY: all check check-unit check-iotests check-asan install clean distclean

# ---- crash-consistency checker (docs/crash-testing.md) ----
crashtest-obj-y = tests/crashtest/crashtest.o tests/crashtest/model.o \
                  tests/crashtest/workload.o tests/crashtest/verify.o \
                  tests/crashtest/selftest.o
tests/crashtest/crashtest: $(crashtest-obj-y) libqemublock.a
	$(CC) $(LDFLAGS) -o $@ $(filter %.o,$^) $(LINK_BLOCK) $(LIBS)

# CI mode (as in tests/run-all): self-test of the checker, then 4600 crash
# points: 400 on raw, 600 on add-cow, 300 on fvd with a data file and 300
# without, as many again plus 200 as compact images (the table), 1000 with
# fvd's prefetch job running (500 raw layout, 500 compact), 1000 on
# qcow2 (over a backing file, without one with subclusters, with a data
# file), each with its own cache mode, cluster size, cache size, queue
# depth and timing.
check-crash: tests/crashtest/crashtest
	@tests/crashtest/crashtest --self-test
	@tests/crashtest/crashtest -f raw -n 400
	@tests/crashtest/crashtest -f add-cow -n 600
	@tests/crashtest/crashtest -f fvd -n 300
	@tests/crashtest/crashtest -f fvd --no-data-file -n 300
	@tests/crashtest/crashtest -f fvd -o compact_image=on -n 500
	@tests/crashtest/crashtest -f fvd --no-data-file -o compact_image=on -n 500
	@tests/crashtest/crashtest -f fvd --prefetch -n 500
	@tests/crashtest/crashtest -f fvd --no-data-file -o compact_image=on --prefetch -n 500
	@tests/crashtest/crashtest -f qcow2 -n 400
	@tests/crashtest/crashtest -f qcow2 -n 300 --no-backing -o extended_l2=on
	@tests/crashtest/crashtest -f qcow2 -n 300 --data-file

.PHONY: check-crash

# ---- sheepdog test peer (tests/sheepdog/README.md) ----
# Independent of libqemublock.a: it speaks the wire protocol only.
sheepdog-test-progs = tests/sheepdog/sheepdog-server

tests/sheepdog/sheepdog-server: tests/sheepdog/sheepdog-server.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

check-sheepdog-server: $(sheepdog-test-progs)
	@python3 $(SRC_PATH)/tests/sheepdog/test-server.py \
	  --server $(CURDIR)/tests/sheepdog/sheepdog-server

clean: clean-sheepdog-server
clean-sheepdog-server:
	rm -f $(sheepdog-test-progs)

.PHONY: check-sheepdog-server clean-sheepdog-server

-include $(wildcard *.d */*.d */*/*.d)
