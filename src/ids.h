/* ids.h - key validation, holder ids, randomness (ids.c). */
#ifndef BIDLOCK_IDS_H
#define BIDLOCK_IDS_H

#include "common.h"

/* Write a sentence into why[0..why_len) (if why is not NULL) and return
 * BL_EINVAL: how every validator explains a refusal. */
int bl_einval(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 0 if `id` is a valid marketplace (is_marketplace) or posting id, else
 * BL_EINVAL with a sentence in why[0..why_len). */
int bl_validate_id(const char *id, int is_marketplace, char *why, size_t why_len);
int bl_validate_prefix(const char *prefix, char *why, size_t why_len);
/* 0 if holder (not NULL) could be a manager's holder id: 1..319 bytes, no
 * whitespace or control character, not starting with '~'. */
int bl_validate_holder(const char *holder, char *why, size_t why_len);
/* "<prefix>:<mp>:<posting>" into a fresh malloc'd string; NULL on OOM. */
char *bl_make_key(const char *prefix, const char *mp, const char *posting, size_t *len);
/* "<hostname>:<pid>:<uuid4>" into buf (BL_HOLDER_MAX). 0 or BL_ENOMEM. */
int bl_make_holder(char *buf, size_t len);
/* Seed for the per-manager generator, from the kernel's random source. */
uint64_t bl_random_seed(void);
/* splitmix64 step: cheap, good enough for jitter. */
uint64_t bl_rand_next(uint64_t *state);
/* CLOCK_MONOTONIC in microseconds (latency samples). */
uint64_t bl_now_us(void);

#endif
