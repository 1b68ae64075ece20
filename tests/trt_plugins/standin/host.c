/* TensorRT stand-in host: loads the PHM plugin library the way trtexec does, in a process linked
 * against (the stub) libnvinfer.so.10, then prints what the plugin registry holds.
 *   host static  LIB   trtexec --staticPlugins=LIB: dlopen(LIB, RTLD_LAZY); creators register themselves
 *   host dynamic LIB   trtexec --dynamicPlugins=LIB: IPluginRegistry::loadLibrary(LIB) (getCreators)
 * Exit 0 and "registered N ..." on success; exit 1 with the loader's message otherwise. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int standin_registered(char* buf, int size);
int standin_load_library(const char* path);

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: host static|dynamic LIB\n");
        return 2;
    }
    if (strcmp(argv[1], "static") == 0) {
        if (!dlopen(argv[2], RTLD_LAZY)) {
            fprintf(stderr, "dlopen: %s\n", dlerror());
            return 1;
        }
    } else if (!standin_load_library(argv[2])) {
        fprintf(stderr, "loadLibrary failed\n");
        return 1;
    }
    char buf[1024];
    int n = standin_registered(buf, sizeof buf);
    printf("registered %d %s\n", n, buf);
    return 0;
}
