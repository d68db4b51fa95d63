/* scripts.h - the Lua that runs on the server. Each script is atomic there,
 * which is what makes "check the holder, then act" safe. */
#ifndef BIDLOCK_SCRIPTS_H
#define BIDLOCK_SCRIPTS_H

enum {
    BL_SCRIPT_ACQUIRE,
    BL_SCRIPT_RELEASE,
    BL_SCRIPT_EXTEND,
    BL_SCRIPT_ACQUIRE_MANY,
    BL_SCRIPT_RELEASE_MANY,
    BL_SCRIPT_EXTEND_MANY,
    BL_SCRIPT_EXTEND_BATCH,
    BL_SCRIPT_INSPECT,
    BL_SCRIPT_CLEANUP,
    BL_SCRIPT_TRANSFER,
    BL_SCRIPT_LOCK_INFO,
    BL_SCRIPT_COUNT
};

typedef struct bl_script {
    const char *name;
    const char *body;
} bl_script;

extern const bl_script bl_scripts[BL_SCRIPT_COUNT];

/* Acquire results besides a positive fencing token. */
#define BL_ACQ_BUSY 0
#define BL_ACQ_DONE (-2)
#define BL_ACQ_OURS (-3) /* taken, by this holder id: maybe a grant whose reply was lost */
/* Release results. */
#define BL_REL_NOT_HELD 0
#define BL_REL_OK 1
#define BL_REL_HANDED_OFF 2

#endif
