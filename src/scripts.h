/* scripts.h - the Lua that runs on the server. Each script is atomic there,
 * which is what makes "check the holder, then act" safe. */
#ifndef BIDLOCK_SCRIPTS_H
#define BIDLOCK_SCRIPTS_H

enum { BL_SCRIPT_ACQUIRE, BL_SCRIPT_RELEASE, BL_SCRIPT_COUNT };

typedef struct bl_script {
    const char *name;
    const char *body;
} bl_script;

extern const bl_script bl_scripts[BL_SCRIPT_COUNT];

#endif
