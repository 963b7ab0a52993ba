/*
 * fake_nvml.c - a scenario-driven stand-in for libnvidia-ml.so.1.
 *
 * Built as a shared library named libnvidia-ml.so.1 and put first on
 * LD_LIBRARY_PATH, it lets the real, unmodified pynvml (nvidia-ml-py) run
 * against GPUs described in a text file.  See README.md in this folder for
 * the scenario format; the environment variables are:
 *
 *   FAKE_NVML_SCENARIO  scenario file, read at the first nvmlInit*()
 *   FAKE_NVML_TICK      base tick for "step" values (default 0)
 *   FAKE_NVML_CALLS     file that per-function call counts are appended to
 *
 * Only the small part of the NVML ABI that pynvml needs for the functions
 * below is declared here; every struct mirrors the nvml.h type named in its
 * comment (NVML 13.x layouts) and is size-checked with _Static_assert.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE /* syscall(SYS_gettid): the thread ids that nvmlDeviceGetPcieThroughput counts */

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ */
/* NVML ABI subset                                                     */
/* ------------------------------------------------------------------ */

/* mirrors nvmlReturn_t (enum nvmlReturn_enum) */
typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_ARGUMENT_VERSION_MISMATCH 25
#define NVML_ERROR_UNKNOWN 999

/* mirrors nvmlDevice_t (typedef struct nvmlDevice_st* nvmlDevice_t); the
 * struct is opaque to callers, here it is our handle object. */
struct nvmlDevice_st {
    int is_mig;  /* 0: a physical GPU, 1: a MIG device */
    int dev;     /* index of the (parent) GPU */
    int slot;    /* MIG slot, -1 for a GPU */
};
typedef struct nvmlDevice_st *nvmlDevice_t;

/* mirrors nvmlGpuInstance_t (typedef struct nvmlGpuInstance_st* nvmlGpuInstance_t), opaque to callers */
struct nvmlGpuInstance_st {
    int dev;   /* index of the parent GPU */
    int slot;  /* index into that GPU's gpu_instance entries */
};
typedef struct nvmlGpuInstance_st *nvmlGpuInstance_t;

/* mirrors nvmlGpuInstancePlacement_t and nvmlGpuInstanceInfo_t */
typedef struct {
    unsigned int start; /* index of the first occupied memory slice */
    unsigned int size;  /* number of memory slices occupied */
} fake_gpu_instance_placement_t;
typedef struct {
    nvmlDevice_t device;
    unsigned int id;
    unsigned int profileId;
    fake_gpu_instance_placement_t placement;
} fake_gpu_instance_info_t;
_Static_assert(sizeof(fake_gpu_instance_info_t) == 24, "nvmlGpuInstanceInfo_t layout");

#define PCI_BUS_ID_BUFFER_SIZE 32    /* NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE */
#define PCI_BUS_ID_BUFFER_V2_SIZE 16 /* NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE */

/* mirrors nvmlPciInfo_t (struct nvmlPciInfo_st) */
typedef struct {
    char busIdLegacy[PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[PCI_BUS_ID_BUFFER_SIZE];
} fake_pci_info_t;
_Static_assert(sizeof(fake_pci_info_t) == 68, "nvmlPciInfo_t layout");

/* mirrors nvmlPciInfoExt_v1_t */
typedef struct {
    unsigned int version;
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    unsigned int baseClass;
    unsigned int subClass;
    char busId[PCI_BUS_ID_BUFFER_SIZE];
} fake_pci_info_ext_t;
_Static_assert(sizeof(fake_pci_info_ext_t) == 64, "nvmlPciInfoExt_v1_t layout");
/* nvmlPciInfoExt_v1 = NVML_STRUCT_VERSION(PciInfoExt, 1) */
#define FAKE_PCI_INFO_EXT_V1 ((unsigned int)(sizeof(fake_pci_info_ext_t) | (1u << 24)))

/* mirrors nvmlMemory_t (struct nvmlMemory_st) */
typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} fake_memory_t;
_Static_assert(sizeof(fake_memory_t) == 24, "nvmlMemory_t layout");

/* mirrors nvmlMemory_v2_t (struct nvmlMemory_v2_st) */
typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} fake_memory_v2_t;
_Static_assert(sizeof(fake_memory_v2_t) == 40, "nvmlMemory_v2_t layout");
/* nvmlMemory_v2 = NVML_STRUCT_VERSION(Memory, 2) = 0x02000028 */
#define FAKE_MEMORY_V2 ((unsigned int)(sizeof(fake_memory_v2_t) | (2u << 24)))

/* mirrors nvmlTemperature_v1_t */
typedef struct {
    unsigned int version;
    int sensorType; /* nvmlTemperatureSensors_t */
    int temperature;
} fake_temperature_v1_t;
_Static_assert(sizeof(fake_temperature_v1_t) == 12, "nvmlTemperature_v1_t layout");
/* nvmlTemperature_v1 = NVML_STRUCT_VERSION(Temperature, 1) = 0x0100000C */
#define FAKE_TEMPERATURE_V1 ((unsigned int)(sizeof(fake_temperature_v1_t) | (1u << 24)))
#define FAKE_TEMPERATURE_COUNT 2 /* NVML_TEMPERATURE_COUNT (GPU, GPU_MAX) */
/* NVML_TEMPERATURE_THRESHOLD_COUNT: shutdown, slowdown, mem max, gpu max, acoustic min/curr/max, gps curr */
#define FAKE_TEMPERATURE_THRESHOLD_COUNT 8

/* mirrors nvmlMarginTemperature_v1_t */
typedef struct {
    unsigned int version;
    int marginTemperature; /* signed: below zero past the GPU's T.Limit */
} fake_margin_temperature_v1_t;
_Static_assert(sizeof(fake_margin_temperature_v1_t) == 8, "nvmlMarginTemperature_v1_t layout");
/* nvmlMarginTemperature_v1 = NVML_STRUCT_VERSION(MarginTemperature, 1) = 0x01000008 */
#define FAKE_MARGIN_TEMPERATURE_V1 ((unsigned int)(sizeof(fake_margin_temperature_v1_t) | (1u << 24)))

/* mirrors nvmlUtilization_t (struct nvmlUtilization_st) */
typedef struct {
    unsigned int gpu;
    unsigned int memory;
} fake_utilization_t;

/* mirrors nvmlValue_t (union nvmlValue_st) */
typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} fake_value_t;

/* mirrors nvmlValueType_t */
enum {
    VT_DOUBLE = 0, VT_UINT = 1, VT_ULONG = 2, VT_ULL = 3,
    VT_SLL = 4, VT_SINT = 5, VT_USHORT = 6
};

/* mirrors nvmlFieldValue_t (struct nvmlFieldValue_st) */
typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;  /* nvmlValueType_t */
    int nvmlReturn; /* nvmlReturn_t */
    fake_value_t value;
} fake_field_value_t;
_Static_assert(sizeof(fake_field_value_t) == 40, "nvmlFieldValue_t layout");

/* mirrors nvmlProcessInfo_t == nvmlProcessInfo_v2_t (what the _v3 process
 * queries fill; pynvml's c_nvmlProcessInfo_v3_t is the same 24 bytes) */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} fake_process_info_t;
_Static_assert(sizeof(fake_process_info_t) == 24, "nvmlProcessInfo_t layout");

/* mirrors nvmlProcessUtilizationSample_t */
typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} fake_process_util_sample_t;
_Static_assert(sizeof(fake_process_util_sample_t) == 32, "nvmlProcessUtilizationSample_t layout");

/* mirrors nvmlAccountingStats_t (struct nvmlAccountingStats_st) */
typedef struct {
    unsigned int gpuUtilization;
    unsigned int memoryUtilization;
    unsigned long long maxMemoryUsage;
    unsigned long long time;
    unsigned long long startTime;
    unsigned int isRunning;
    unsigned int reserved[5];
} fake_accounting_stats_t;
_Static_assert(sizeof(fake_accounting_stats_t) == 56, "nvmlAccountingStats_t layout");

/* mirrors nvmlGpmSample_t (typedef struct nvmlGpmSample_st* nvmlGpmSample_t); the struct is opaque
 * to callers, here it records what was sampled and when (see the GPM section below). */
typedef struct nvmlGpmSample_st *nvmlGpmSample_t;

/* mirrors nvmlGpmMetric_t and its metricInfo member */
typedef struct {
    char *shortName;
    char *longName;
    char *unit;
} fake_gpm_metric_info_t;

typedef struct {
    unsigned int metricId;
    nvmlReturn_t nvmlReturn;
    double value;
    fake_gpm_metric_info_t metricInfo;
} fake_gpm_metric_t;
_Static_assert(sizeof(fake_gpm_metric_t) == 40, "nvmlGpmMetric_t layout");

/* NVML_GPM_METRIC_MAX of the CUDA 13.3 nvml.h.  It grew (98, 210, 333; pynvml 13.615 has 477) while
 * NVML_GPM_METRICS_GET_VERSION stayed 1: the array is last and only numMetrics entries are read, so a
 * caller's array of any of those sizes works. */
#define GPM_METRIC_MAX 333

/* mirrors nvmlGpmMetricsGet_t */
typedef struct {
    unsigned int version;
    unsigned int numMetrics;
    nvmlGpmSample_t sample1;
    nvmlGpmSample_t sample2;
    fake_gpm_metric_t metrics[GPM_METRIC_MAX];
} fake_gpm_metrics_get_t;
_Static_assert(sizeof(fake_gpm_metrics_get_t) == 24 + 40 * GPM_METRIC_MAX, "nvmlGpmMetricsGet_t layout");
#define GPM_METRICS_GET_VERSION 1 /* NVML_GPM_METRICS_GET_VERSION */

/* mirrors nvmlGpmSupport_t */
typedef struct {
    unsigned int version;
    unsigned int isSupportedDevice;
} fake_gpm_support_t;
_Static_assert(sizeof(fake_gpm_support_t) == 8, "nvmlGpmSupport_t layout");
#define GPM_SUPPORT_VERSION 1 /* NVML_GPM_SUPPORT_VERSION */
/* "the interval between two nvmlGpmSampleGet() calls should be greater than 100ms" (nvml.h) */
#define GPM_MIN_INTERVAL_NS 100000000LL

#define NVLINK_MAX_LINKS 36 /* NVML_NVLINK_MAX_LINKS */
#define CLOCK_COUNT 4       /* NVML_CLOCK_COUNT: graphics, sm, mem, video */
#define SAMPLING_PERIOD_US 167000u
#define ACCOUNTING_BUFFER_SIZE 1000u

/* ------------------------------------------------------------------ */
/* exported function list (drives call counting and `error FN CODE`)   */
/* ------------------------------------------------------------------ */

#define FN_LIST(X)                                   \
    X(nvmlInitWithFlags)                             \
    X(nvmlInit_v2)                                   \
    X(nvmlInit)                                      \
    X(nvmlShutdown)                                  \
    X(nvmlErrorString)                               \
    X(nvmlSystemGetDriverVersion)                    \
    X(nvmlSystemGetNVMLVersion)                      \
    X(nvmlSystemGetCudaDriverVersion)                \
    X(nvmlSystemGetCudaDriverVersion_v2)             \
    X(nvmlDeviceGetCount_v2)                         \
    X(nvmlDeviceGetHandleByIndex_v2)                 \
    X(nvmlDeviceGetHandleByUUID)                     \
    X(nvmlDeviceGetHandleByPciBusId_v2)              \
    X(nvmlDeviceGetIndex)                            \
    X(nvmlDeviceGetUUID)                             \
    X(nvmlDeviceGetName)                             \
    X(nvmlDeviceGetSerial)                           \
    X(nvmlDeviceGetVbiosVersion)                     \
    X(nvmlDeviceGetBrand)                            \
    X(nvmlDeviceGetMinorNumber)                      \
    X(nvmlDeviceGetPciInfo_v3)                       \
    X(nvmlDeviceGetPciInfoExt)                       \
    X(nvmlDeviceGetArchitecture)                     \
    X(nvmlDeviceGetTemperatureV)                     \
    X(nvmlDeviceGetTemperature)                      \
    X(nvmlDeviceGetTemperatureThreshold)             \
    X(nvmlDeviceGetMarginTemperature)                \
    X(nvmlDeviceGetMemoryInfo)                       \
    X(nvmlDeviceGetMemoryInfo_v2)                    \
    X(nvmlDeviceGetUtilizationRates)                 \
    X(nvmlDeviceGetEncoderUtilization)               \
    X(nvmlDeviceGetDecoderUtilization)               \
    X(nvmlDeviceGetClockInfo)                        \
    X(nvmlDeviceGetClock)                            \
    X(nvmlDeviceGetMaxClockInfo)                     \
    X(nvmlDeviceGetCurrentClocksEventReasons)        \
    X(nvmlDeviceGetCurrentClocksThrottleReasons)     \
    X(nvmlDeviceGetPerformanceState)                 \
    X(nvmlDeviceGetNumFans)                          \
    X(nvmlDeviceGetFanSpeed_v2)                      \
    X(nvmlDeviceGetFanSpeed)                         \
    X(nvmlDeviceGetPersistenceMode)                  \
    X(nvmlDeviceGetAccountingMode)                   \
    X(nvmlDeviceGetComputeMode)                      \
    X(nvmlDeviceGetMigMode)                          \
    X(nvmlDeviceGetPowerUsage)                       \
    X(nvmlDeviceGetEnforcedPowerLimit)               \
    X(nvmlDeviceGetPowerManagementLimit)             \
    X(nvmlDeviceGetTotalEnergyConsumption)           \
    X(nvmlDeviceGetEccMode)                          \
    X(nvmlDeviceGetTotalEccErrors)                   \
    X(nvmlDeviceGetFieldValues)                      \
    X(nvmlDeviceGetCurrPcieLinkGeneration)           \
    X(nvmlDeviceGetMaxPcieLinkGeneration)            \
    X(nvmlDeviceGetGpuMaxPcieLinkGeneration)         \
    X(nvmlDeviceGetCurrPcieLinkWidth)                \
    X(nvmlDeviceGetMaxPcieLinkWidth)                 \
    X(nvmlDeviceGetPcieThroughput)                   \
    X(nvmlDeviceGetPcieReplayCounter)                \
    X(nvmlDeviceGetNvLinkState)                      \
    X(nvmlDeviceGetNvLinkVersion)                    \
    X(nvmlDeviceGetNvLinkRemotePciInfo_v2)           \
    X(nvmlDeviceGetNvLinkRemoteDeviceType)           \
    X(nvmlDeviceGetComputeRunningProcesses_v3)       \
    X(nvmlDeviceGetGraphicsRunningProcesses_v3)      \
    X(nvmlDeviceGetProcessUtilization)               \
    X(nvmlDeviceGetAccountingPids)                   \
    X(nvmlDeviceGetAccountingStats)                  \
    X(nvmlDeviceGetAccountingBufferSize)             \
    X(nvmlDeviceGetMaxMigDeviceCount)                \
    X(nvmlDeviceGetMigDeviceHandleByIndex)           \
    X(nvmlDeviceGetGpuInstanceId)                    \
    X(nvmlDeviceGetComputeInstanceId)                \
    X(nvmlDeviceIsMigDeviceHandle)                   \
    X(nvmlDeviceGetDeviceHandleFromMigDeviceHandle)  \
    X(nvmlDeviceGetGpuInstanceById)                  \
    X(nvmlGpuInstanceGetInfo)                        \
    X(nvmlGpmQueryDeviceSupport)                     \
    X(nvmlGpmSampleAlloc)                            \
    X(nvmlGpmSampleFree)                             \
    X(nvmlGpmSampleGet)                              \
    X(nvmlGpmMigSampleGet)                           \
    X(nvmlGpmMetricsGet)                             \
    X(nvmlDeviceGetSupportedEventTypes)              \
    X(nvmlDeviceRegisterEvents)                      \
    X(nvmlEventSetCreate)                            \
    X(nvmlEventSetFree)                              \
    X(nvmlEventSetWait_v2)

#define AS_ENUM(n) FN_##n,
enum { FN_LIST(AS_ENUM) FN_COUNT };
#undef AS_ENUM
#define AS_NAME(n) #n,
static const char *const fn_names[FN_COUNT] = { FN_LIST(AS_NAME) };
#undef AS_NAME

static int fn_lookup(const char *name)
{
    for (int i = 0; i < FN_COUNT; i++)
        if (strcmp(fn_names[i], name) == 0)
            return i;
    return -1;
}

/* ------------------------------------------------------------------ */
/* scenario model                                                      */
/* ------------------------------------------------------------------ */

#define MAX_DEV 64
#define MAX_MIG 16
#define MAX_GI 16
#define MAX_VALS 8
#define SYS_SLOT MAX_DEV /* call-count row for calls not tied to a device */

/* A numeric key: `KEY [INDEX...] VALUE... [step S]`; step applies to the
 * last value. */
typedef struct {
    const char *key; /* points into key_specs */
    int nvals;
    long long v[MAX_VALS];
    int has_step;
    long long step;
    size_t rs; /* read-counter slot, see read_slot() */
} num_entry;

/* A string key: `KEY REST OF LINE` or `KEY INDEX STRING [NUMBER]`. */
typedef struct {
    const char *key;
    int has_idx;
    long long idx;
    char *s;
    int has_num;
    long long num;
} str_entry;

typedef struct {
    unsigned int fid;
    unsigned int scope;
    int scoped;
    int err;  /* nonzero: this entry reports nvmlReturn = err */
    int type; /* VT_* */
    int has_step;
    union { unsigned long long u; double d; } base, step;
    size_t rs; /* read-counter slot, see read_slot() */
} field_entry;

typedef struct { int fn; int code; } err_entry;

typedef struct {
    unsigned int pid;
    unsigned long long mem;
    int graphics;
    unsigned int gi, ci;
} proc_entry;

typedef struct {
    unsigned int pid;
    unsigned long long ts;
    unsigned int sm, mem, enc, dec;
} sample_entry;

typedef struct {
    unsigned int pid, gpu, mem;
    unsigned long long maxmem, start, time_ms;
    unsigned int running;
} acct_entry;

/* gpm_metric ID VALUE | gpm_metric ID error CODE | gpm_mig_metric GI ID ... */
typedef struct {
    int gi; /* -1: the whole GPU */
    unsigned int id;
    int err;
    double value;
} gpm_entry;

typedef struct {
    int present;
    char *uuid;
    char *profile; /* optional, for nvmlDeviceGetName on the MIG handle */
    unsigned int gi, ci;
    /* mig_memory INDEX TOTAL USED [RESERVED] | mig_memory INDEX error CODE; without it: 3 */
    int has_memory, memory_err;
    unsigned long long memory_total, memory_used, memory_reserved;
} mig_entry;

/* gpu_instance ID PROFILE_ID PLACEMENT_START PLACEMENT_SIZE */
typedef struct {
    int present;
    unsigned int id, profile_id, start, size;
} gi_entry;

#define DYN(T, name) T *name; size_t n_##name, cap_##name

typedef struct {
    DYN(num_entry, nums);
    DYN(str_entry, strs);
    DYN(field_entry, fields);
    DYN(err_entry, errs);
    DYN(proc_entry, procs);
    DYN(sample_entry, samples);
    DYN(acct_entry, accts);
    DYN(gpm_entry, gpms);
    int lost;
    mig_entry mig[MAX_MIG];
    gi_entry gis[MAX_GI];
} device_t;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_refcount;          /* nvmlInit refcount; >0 means initialised */
static long long g_tick;        /* FAKE_NVML_TICK */
static int g_ndev;
static device_t g_sys;          /* `system ...` lines */
static device_t g_dev[MAX_DEV];
/* Handles live in static storage so that they stay valid (and equal) across
 * shutdown/re-init, like real NVML handles do. */
static struct nvmlDevice_st g_handles[MAX_DEV];
static struct nvmlDevice_st g_mig_handles[MAX_DEV][MAX_MIG];
static struct nvmlGpuInstance_st g_gi_handles[MAX_DEV][MAX_GI];
static unsigned long g_counts[MAX_DEV + 1][FN_COUNT];
/* GPM samples: allocated now, most allocated at once since the last flush, and whether any ever was */
static unsigned long g_gpm_live, g_gpm_peak;
static int g_gpm_used;
/* event sets: created and not freed now, and whether any ever was */
static unsigned long g_event_sets_live;
static int g_event_sets_used;
/* the threads that called nvmlDeviceGetPcieThroughput since the last flush (kernel thread ids): a
 * collector that starts threads for its samples shows as many ids as it started */
#define MAX_PCIE_THREADS 4096
static pid_t g_pcie_threads[MAX_PCIE_THREADS];
static unsigned long g_pcie_thread_count;

#define LOCK() pthread_mutex_lock(&g_lock)
#define UNLOCK() pthread_mutex_unlock(&g_lock)

static void *grow(void *p, size_t *cap, size_t n, size_t sz)
{
    if (n < *cap)
        return p;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *q = realloc(p, ncap * sz);
    if (!q)
        abort();
    *cap = ncap;
    return q;
}

/* Read counters for `step` values, keyed by what an entry describes (device,
 * key, indices / field, scope).  They live outside the scenario so that they
 * survive nvmlShutdown + nvmlInit: a process that re-initialises every cycle
 * still sees its values advance. */
typedef struct {
    char id[96];
    unsigned long reads;
} read_counter;
static read_counter *g_rc;
static size_t g_nrc, g_caprc;
static size_t *g_rc_index; /* open addressing over g_rc, entries are slot+1 */
static size_t g_rc_index_cap;

static size_t rc_hash(const char *s)
{
    size_t h = 1469598103934665603ULL & SIZE_MAX;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * (1099511628211ULL & SIZE_MAX);
    return h;
}

static void rc_index_insert(size_t slot)
{
    size_t mask = g_rc_index_cap - 1, i = rc_hash(g_rc[slot].id) & mask;
    while (g_rc_index[i])
        i = (i + 1) & mask;
    g_rc_index[i] = slot + 1;
}

static size_t read_slot(const char *id)
{
    if (g_rc_index_cap) {
        size_t mask = g_rc_index_cap - 1, i = rc_hash(id) & mask;
        for (; g_rc_index[i]; i = (i + 1) & mask)
            if (strcmp(g_rc[g_rc_index[i] - 1].id, id) == 0)
                return g_rc_index[i] - 1;
    }
    if (2 * (g_nrc + 1) > g_rc_index_cap) {
        size_t ncap = g_rc_index_cap ? g_rc_index_cap * 2 : 1024;
        free(g_rc_index);
        g_rc_index = calloc(ncap, sizeof *g_rc_index);
        if (!g_rc_index)
            abort();
        g_rc_index_cap = ncap;
        for (size_t k = 0; k < g_nrc; k++)
            rc_index_insert(k);
    }
    g_rc = grow(g_rc, &g_caprc, g_nrc, sizeof *g_rc);
    memset(&g_rc[g_nrc], 0, sizeof *g_rc);
    snprintf(g_rc[g_nrc].id, sizeof g_rc[g_nrc].id, "%s", id);
    rc_index_insert(g_nrc);
    return g_nrc++;
}

#define READS(e) (g_rc[(e)->rs].reads)

static int dev_no(const device_t *d)
{
    return d == &g_sys ? -1 : (int)(d - g_dev);
}

#define PUSH(d, name) \
    ((d)->name = grow((d)->name, &(d)->cap_##name, (d)->n_##name, sizeof(*(d)->name)), \
     memset(&(d)->name[(d)->n_##name], 0, sizeof(*(d)->name)), &(d)->name[(d)->n_##name++])

static void device_free(device_t *d)
{
    for (size_t i = 0; i < d->n_strs; i++)
        free(d->strs[i].s);
    for (int i = 0; i < MAX_MIG; i++) {
        free(d->mig[i].uuid);
        free(d->mig[i].profile);
    }
    free(d->nums);
    free(d->strs);
    free(d->fields);
    free(d->errs);
    free(d->procs);
    free(d->samples);
    free(d->accts);
    free(d->gpms);
    memset(d, 0, sizeof(*d));
}

static void scenario_free(void)
{
    device_free(&g_sys);
    for (int i = 0; i < MAX_DEV; i++)
        device_free(&g_dev[i]);
    g_ndev = 0;
}

/* ---- key table ---- */

typedef struct {
    const char *name;
    int scope;  /* 1: device block, 2: system, 3: both */
    int kind;   /* 'n' numeric, 's' string (rest of line), 'i' string with index */
    int nidx;   /* numeric: index arguments before the value(s) */
    int nval;   /* numeric: number of values */
} key_spec;

static const key_spec key_specs[] = {
    /* system */
    {"driver_version", 2, 's', 0, 0},
    {"nvml_version", 2, 's', 0, 0},
    {"cuda_driver_version", 2, 'n', 0, 1},
    {"init_error", 2, 'n', 0, 1},
    /* identity */
    {"uuid", 1, 's', 0, 0},
    {"name", 1, 's', 0, 0},
    {"serial", 1, 's', 0, 0},
    {"vbios_version", 1, 's', 0, 0},
    {"pci_bus_id", 1, 's', 0, 0},
    {"brand", 1, 'n', 0, 1},
    {"minor_number", 1, 'n', 0, 1},
    {"architecture", 1, 'n', 0, 1},
    {"pci_device_id", 1, 'n', 0, 1},
    {"pci_sub_system_id", 1, 'n', 0, 1},
    /* gauges */
    {"temperature", 1, 'n', 0, 1},
    {"temperature_threshold", 1, 'n', 1, 1},
    {"temperature_margin", 1, 'n', 0, 1},
    {"memory_total", 1, 'n', 0, 1},
    {"memory_used", 1, 'n', 0, 1},
    {"memory_free", 1, 'n', 0, 1},
    {"memory_reserved", 1, 'n', 0, 1},
    {"utilization_gpu", 1, 'n', 0, 1},
    {"utilization_memory", 1, 'n', 0, 1},
    {"encoder_utilization", 1, 'n', 0, 1},
    {"decoder_utilization", 1, 'n', 0, 1},
    {"clock_graphics", 1, 'n', 0, 1},
    {"clock_sm", 1, 'n', 0, 1},
    {"clock_memory", 1, 'n', 0, 1},
    {"clock_video", 1, 'n', 0, 1},
    {"max_clock_graphics", 1, 'n', 0, 1},
    {"max_clock_sm", 1, 'n', 0, 1},
    {"max_clock_memory", 1, 'n', 0, 1},
    {"max_clock_video", 1, 'n', 0, 1},
    {"clocks_event_reasons", 1, 'n', 0, 1},
    {"pstate", 1, 'n', 0, 1},
    {"fan_count", 1, 'n', 0, 1},
    {"fan_speed", 1, 'n', 1, 1},
    {"persistence_mode", 1, 'n', 0, 1},
    {"accounting_mode", 1, 'n', 0, 1},
    {"compute_mode", 1, 'n', 0, 1},
    {"mig_mode", 1, 'n', 0, 2},
    {"mig_max", 1, 'n', 0, 1},
    {"gpm_supported", 1, 'n', 0, 1},
    {"event_types", 1, 'n', 0, 1},
    {"event_source", 2, 's', 0, 0},
    {"power_usage", 1, 'n', 0, 1},
    {"power_limit", 1, 'n', 0, 1},
    {"energy", 1, 'n', 0, 1},
    {"ecc_mode", 1, 'n', 0, 2},
    {"ecc_errors", 1, 'n', 2, 1},
    /* PCIe */
    {"pcie_gen", 1, 'n', 0, 1},
    {"pcie_gen_max", 1, 'n', 0, 1},
    {"pcie_width", 1, 'n', 0, 1},
    {"pcie_width_max", 1, 'n', 0, 1},
    {"pcie_tx_kbps", 1, 'n', 0, 1},
    {"pcie_rx_kbps", 1, 'n', 0, 1},
    {"pcie_replays", 1, 'n', 0, 1},
    /* NVLink */
    {"nvlink_state", 1, 'n', 1, 1},
    {"nvlink_version", 1, 'n', 1, 1},
    {"nvlink_remote_type", 1, 'n', 1, 1},
    {"nvlink_remote_pci", 1, 'i', 0, 0},
};
#define N_KEY_SPECS (sizeof(key_specs) / sizeof(key_specs[0]))

static const key_spec *key_find(const char *name)
{
    for (size_t i = 0; i < N_KEY_SPECS; i++)
        if (strcmp(key_specs[i].name, name) == 0)
            return &key_specs[i];
    return NULL;
}

/* ---- number parsing ---- */

static int parse_int(const char *t, long long *out)
{
    char *end = NULL;
    errno = 0;
    if (!t || !*t)
        return -1;
    if (t[0] == '-') {
        long long x = strtoll(t, &end, 10);
        if (errno || *end)
            return -1;
        *out = x;
        return 0;
    }
    int base = (t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) ? 16 : 10;
    if (!isdigit((unsigned char)t[base == 16 ? 2 : 0]) &&
        !(base == 16 && isxdigit((unsigned char)t[2])))
        return -1;
    unsigned long long x = strtoull(t, &end, base);
    if (errno || *end)
        return -1;
    *out = (long long)x;
    return 0;
}

static int parse_double(const char *t, double *out)
{
    char *end = NULL;
    errno = 0;
    if (!t || !*t)
        return -1;
    double x = strtod(t, &end);
    if (errno || *end)
        return -1;
    *out = x;
    return 0;
}

static int parse_type(const char *t)
{
    static const char *const names[] = {"dbl", "uint", "ulong", "ull", "sll", "sint", "ushort"};
    for (int i = 0; i < 7; i++)
        if (strcmp(t, names[i]) == 0)
            return i;
    return -1;
}

/* Parse "DDDDDDDD:BB:DD.F" or "DDDD:BB:DD.F" (hex) */
static int parse_bus_id(const char *s, unsigned int *dom, unsigned int *bus, unsigned int *dev)
{
    unsigned int a, b, c, f;
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &a, &b, &c, &f, &tail) == 4) {
        *dom = a; *bus = b; *dev = c;
        return 0;
    }
    return -1;
}

/* ---- tokenizer ---- */

#define MAX_TOK 32

typedef struct {
    char *orig;           /* comment-stripped, trimmed line */
    char *work;           /* copy with NULs between tokens */
    int n;
    char *tok[MAX_TOK];
    size_t off[MAX_TOK];  /* offset of each token in orig */
} line_t;

static int tokenize(line_t *L, char *raw)
{
    /* strip comment: '#' at line start or after whitespace */
    for (char *p = raw; *p; p++) {
        if (*p == '#' && (p == raw || isspace((unsigned char)p[-1]))) {
            *p = 0;
            break;
        }
    }
    size_t len = strlen(raw);
    while (len && isspace((unsigned char)raw[len - 1]))
        raw[--len] = 0;
    L->orig = raw;
    L->work = strdup(raw);
    if (!L->work)
        abort();
    L->n = 0;
    char *p = L->work;
    while (*p) {
        while (*p && isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        if (L->n == MAX_TOK)
            return -1;
        L->tok[L->n] = p;
        L->off[L->n] = (size_t)(p - L->work);
        L->n++;
        while (*p && !isspace((unsigned char)*p))
            p++;
        if (*p)
            *p++ = 0;
    }
    return 0;
}

/* rest of the original line starting at token i */
static const char *rest_from(line_t *L, int i)
{
    return L->orig + L->off[i];
}

/* ---- scenario parser ---- */

static int g_parse_line;
static const char *g_parse_path;

static int perr(const char *msg, const char *what)
{
    fprintf(stderr, "fake_nvml: %s:%d: %s%s%s\n", g_parse_path ? g_parse_path : "?",
            g_parse_line, msg, what ? ": " : "", what ? what : "");
    return -1;
}

/* strips a trailing `step S` into *step; returns new token count */
static int take_step(line_t *L, int start, int *has_step, char **step_tok)
{
    int n = L->n;
    *has_step = 0;
    *step_tok = NULL;
    for (int i = start; i < n; i++) {
        if (strcmp(L->tok[i], "step") == 0) {
            if (i + 2 != n)
                return -1;
            *has_step = 1;
            *step_tok = L->tok[i + 1];
            return i;
        }
    }
    return n;
}

static int parse_error_line(device_t *d, line_t *L, int i)
{
    long long code;
    if (L->n - i != 3)
        return perr("expected `error FUNCTION CODE`", NULL);
    int fn = fn_lookup(L->tok[i + 1]);
    if (fn < 0)
        return perr("unknown function in error line", L->tok[i + 1]);
    if (parse_int(L->tok[i + 2], &code))
        return perr("bad error code", L->tok[i + 2]);
    err_entry *e = PUSH(d, errs);
    e->fn = fn;
    e->code = (int)code;
    return 0;
}

static int parse_key_line(device_t *d, line_t *L, int i, int in_system)
{
    const char *key = L->tok[i];
    const key_spec *ks = key_find(key);
    if (!ks)
        return perr("unknown key", key);
    if (in_system && !(ks->scope & 2))
        return perr("key not allowed after `system`", key);
    if (!in_system && !(ks->scope & 1))
        return perr("key only allowed as `system KEY ...`", key);

    if (ks->kind == 's') {
        if (L->n - i < 2)
            return perr("missing value for", key);
        str_entry *e = PUSH(d, strs);
        e->key = ks->name;
        e->s = strdup(rest_from(L, i + 1));
        return 0;
    }
    if (ks->kind == 'i') { /* nvlink_remote_pci LINK BUSID [PCI_DEVICE_ID] */
        long long idx, num = 0;
        int nargs = L->n - i - 1;
        if (nargs != 2 && nargs != 3)
            return perr("expected `KEY INDEX VALUE [PCI_DEVICE_ID]`", key);
        if (parse_int(L->tok[i + 1], &idx))
            return perr("bad index", L->tok[i + 1]);
        if (nargs == 3 && parse_int(L->tok[i + 3], &num))
            return perr("bad number", L->tok[i + 3]);
        str_entry *e = PUSH(d, strs);
        e->key = ks->name;
        e->has_idx = 1;
        e->idx = idx;
        e->s = strdup(L->tok[i + 2]);
        e->has_num = nargs == 3;
        e->num = num;
        return 0;
    }
    /* numeric */
    int has_step;
    char *step_tok;
    int end = take_step(L, i + 1, &has_step, &step_tok);
    if (end < 0)
        return perr("`step S` must come last", key);
    int nnum = end - (i + 1);
    if (nnum != ks->nidx + ks->nval)
        return perr("wrong number of values for", key);
    num_entry *e = PUSH(d, nums);
    e->key = ks->name;
    e->nvals = nnum;
    for (int k = 0; k < nnum; k++)
        if (parse_int(L->tok[i + 1 + k], &e->v[k]))
            return perr("bad integer", L->tok[i + 1 + k]);
    if (has_step) {
        e->has_step = 1;
        if (parse_int(step_tok, &e->step))
            return perr("bad step", step_tok);
    }
    char id[96];
    snprintf(id, sizeof id, "%d|%s|%lld|%lld", dev_no(d), ks->name, ks->nidx >= 1 ? e->v[0] : 0LL,
             ks->nidx >= 2 ? e->v[1] : 0LL);
    e->rs = read_slot(id);
    return 0;
}

/* field ID[:SCOPE] VALUE [TYPE] [step S]   |   field ID[:SCOPE] error CODE */
static int parse_field_line(device_t *d, line_t *L)
{
    if (L->n < 3)
        return perr("expected `field ID[:SCOPE] VALUE [TYPE] [step S]`", NULL);
    field_entry *f = PUSH(d, fields);
    char idbuf[64];
    snprintf(idbuf, sizeof idbuf, "%s", L->tok[1]);
    char *colon = strchr(idbuf, ':');
    long long x;
    if (colon) {
        *colon = 0;
        if (parse_int(colon + 1, &x))
            return perr("bad scope id", colon + 1);
        f->scoped = 1;
        f->scope = (unsigned int)x;
    }
    if (parse_int(idbuf, &x))
        return perr("bad field id", idbuf);
    f->fid = (unsigned int)x;
    char id[96];
    snprintf(id, sizeof id, "%d|field|%u|%d|%u", dev_no(d), f->fid, f->scoped, f->scope);
    f->rs = read_slot(id);

    if (strcmp(L->tok[2], "error") == 0) {
        if (L->n != 4 || parse_int(L->tok[3], &x))
            return perr("expected `field ID[:SCOPE] error CODE`", NULL);
        f->err = (int)x;
        f->type = VT_ULL;
        return 0;
    }
    const char *val = L->tok[2];
    const char *step_tok = NULL;
    f->type = -1;
    for (int i = 3; i < L->n; i++) {
        if (strcmp(L->tok[i], "step") == 0 && i + 1 < L->n) {
            step_tok = L->tok[++i];
            continue;
        }
        int t = parse_type(L->tok[i]);
        if (t < 0)
            return perr("bad field option (type or `step S`)", L->tok[i]);
        f->type = t;
    }
    if (f->type < 0)
        f->type = strpbrk(val, ".eE") && !(val[0] == '0' && (val[1] == 'x' || val[1] == 'X'))
                      ? VT_DOUBLE : VT_ULL;
    if (f->type == VT_DOUBLE) {
        if (parse_double(val, &f->base.d))
            return perr("bad field value", val);
        if (step_tok) {
            f->has_step = 1;
            if (parse_double(step_tok, &f->step.d))
                return perr("bad step", step_tok);
        }
    } else {
        if (parse_int(val, &x))
            return perr("bad field value", val);
        f->base.u = (unsigned long long)x;
        if (step_tok) {
            f->has_step = 1;
            if (parse_int(step_tok, &x))
                return perr("bad step", step_tok);
            f->step.u = (unsigned long long)x;
        }
    }
    return 0;
}

/* process PID USED_MEMORY_BYTES [graphics|compute] [gi N] [ci N] */
static int parse_process_line(device_t *d, line_t *L)
{
    long long x;
    if (L->n < 3)
        return perr("expected `process PID USED_MEMORY_BYTES [graphics] [gi N] [ci N]`", NULL);
    proc_entry *p = PUSH(d, procs);
    p->gi = p->ci = 0xFFFFFFFFu;
    if (parse_int(L->tok[1], &x))
        return perr("bad pid", L->tok[1]);
    p->pid = (unsigned int)x;
    if (strcmp(L->tok[2], "na") == 0)
        p->mem = ~0ULL; /* NVML_VALUE_NOT_AVAILABLE */
    else if (parse_int(L->tok[2], &x))
        return perr("bad memory", L->tok[2]);
    else
        p->mem = (unsigned long long)x;
    for (int i = 3; i < L->n; i++) {
        if (strcmp(L->tok[i], "graphics") == 0)
            p->graphics = 1;
        else if (strcmp(L->tok[i], "compute") == 0)
            p->graphics = 0;
        else if ((strcmp(L->tok[i], "gi") == 0 || strcmp(L->tok[i], "ci") == 0) && i + 1 < L->n) {
            if (parse_int(L->tok[i + 1], &x))
                return perr("bad instance id", L->tok[i + 1]);
            if (L->tok[i][0] == 'g')
                p->gi = (unsigned int)x;
            else
                p->ci = (unsigned int)x;
            i++;
        } else
            return perr("bad process option", L->tok[i]);
    }
    return 0;
}

static int parse_fixed_ints(line_t *L, int n, long long *out, const char *usage)
{
    if (L->n != n + 1)
        return perr("expected", usage);
    for (int i = 0; i < n; i++)
        if (parse_int(L->tok[i + 1], &out[i]))
            return perr("bad integer", L->tok[i + 1]);
    return 0;
}

/* gpm_metric ID VALUE | gpm_metric ID error CODE; gpm_mig_metric GI ID VALUE | ... error CODE */
static int parse_gpm_line(device_t *d, line_t *L)
{
    int mig = strcmp(L->tok[0], "gpm_mig_metric") == 0;
    int i = mig ? 2 : 1; /* the metric id's token */
    long long gi = -1, id, code;
    int ok = L->n == i + 2 || (L->n == i + 3 && strcmp(L->tok[i + 1], "error") == 0);
    if (!ok || (mig && (parse_int(L->tok[1], &gi) || gi < 0)) || parse_int(L->tok[i], &id) || id < 0)
        return perr(mig ? "expected `gpm_mig_metric GI ID VALUE` or `gpm_mig_metric GI ID error CODE`"
                        : "expected `gpm_metric ID VALUE` or `gpm_metric ID error CODE`", NULL);
    gpm_entry *g = PUSH(d, gpms);
    g->gi = (int)gi;
    g->id = (unsigned int)id;
    if (L->n == i + 3) {
        if (parse_int(L->tok[i + 2], &code) || code == 0)
            return perr("bad error code", L->tok[i + 2]);
        g->err = (int)code;
    } else if (parse_double(L->tok[i + 1], &g->value)) {
        return perr("bad GPM value", L->tok[i + 1]);
    }
    return 0;
}

/* gpu_instance ID PROFILE_ID PLACEMENT_START PLACEMENT_SIZE: a GPU instance, as nvmlGpuInstanceGetInfo
 * describes it; a later line with the same ID replaces it */
static int parse_gpu_instance_line(device_t *d, line_t *L)
{
    long long v[4];
    if (L->n != 5)
        return perr("expected `gpu_instance ID PROFILE_ID PLACEMENT_START PLACEMENT_SIZE`", NULL);
    for (int i = 0; i < 4; i++)
        if (parse_int(L->tok[i + 1], &v[i]) || v[i] < 0 || v[i] > 0xFFFFFFFFLL)
            return perr("bad number", L->tok[i + 1]);
    int free_slot = -1;
    for (int i = 0; i < MAX_GI; i++) {
        if (d->gis[i].present && d->gis[i].id == (unsigned int)v[0]) {
            free_slot = i;
            break;
        }
        if (!d->gis[i].present && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0)
        return perr("more than 16 gpu_instance lines", NULL);
    gi_entry *g = &d->gis[free_slot];
    g->present = 1;
    g->id = (unsigned int)v[0];
    g->profile_id = (unsigned int)v[1];
    g->start = (unsigned int)v[2];
    g->size = (unsigned int)v[3];
    return 0;
}

/* mig_memory INDEX TOTAL USED [RESERVED] | mig_memory INDEX error CODE: the memory of a MIG slot */
static int parse_mig_memory_line(device_t *d, line_t *L)
{
    long long idx, v[3] = {0, 0, 0};
    int error = L->n == 4 && strcmp(L->tok[2], "error") == 0;
    if ((L->n != 4 && L->n != 5) || parse_int(L->tok[1], &idx))
        return perr("expected `mig_memory INDEX TOTAL USED [RESERVED]` or "
                    "`mig_memory INDEX error CODE`", NULL);
    if (idx < 0 || idx >= MAX_MIG)
        return perr("mig_memory index out of range (0..15)", L->tok[1]);
    mig_entry *m = &d->mig[idx];
    m->has_memory = 1;
    m->memory_err = 0;
    if (error) {
        if (parse_int(L->tok[3], &v[0]) || v[0] == 0)
            return perr("bad error code", L->tok[3]);
        m->memory_err = (int)v[0];
        return 0;
    }
    for (int i = 0; i + 2 < L->n; i++)
        if (parse_int(L->tok[i + 2], &v[i]) || v[i] < 0)
            return perr("bad byte count", L->tok[i + 2]);
    m->memory_total = (unsigned long long)v[0];
    m->memory_used = (unsigned long long)v[1];
    m->memory_reserved = (unsigned long long)v[2];
    return 0;
}

static int parse_line(char *raw, int *cur)
{
    line_t L;
    int rc = 0;
    if (tokenize(&L, raw)) {
        free(L.work);
        return perr("too many tokens", NULL);
    }
    if (L.n == 0)
        goto out;
    const char *k = L.tok[0];
    if (strcmp(k, "system") == 0) {
        if (L.n < 2) {
            rc = perr("`system` needs a key", NULL);
        } else if (strcmp(L.tok[1], "error") == 0) {
            rc = parse_error_line(&g_sys, &L, 1);
        } else {
            rc = parse_key_line(&g_sys, &L, 1, 1);
        }
        goto out;
    }
    if (strcmp(k, "device") == 0) {
        if (L.n != 1) {
            rc = perr("`device` takes no arguments", NULL);
        } else if (g_ndev == MAX_DEV) {
            rc = perr("too many devices (max 64)", NULL);
        } else {
            *cur = g_ndev++;
        }
        goto out;
    }
    if (*cur < 0) {
        rc = perr("device key before the first `device` line", k);
        goto out;
    }
    device_t *d = &g_dev[*cur];
    long long v[8];
    if (strcmp(k, "lost") == 0) {
        d->lost = 1;
    } else if (strcmp(k, "error") == 0) {
        rc = parse_error_line(d, &L, 0);
    } else if (strcmp(k, "field") == 0) {
        rc = parse_field_line(d, &L);
    } else if (strcmp(k, "process") == 0) {
        rc = parse_process_line(d, &L);
    } else if (strcmp(k, "process_sample") == 0) {
        rc = parse_fixed_ints(&L, 6, v, "process_sample PID TIMESTAMP_US SM MEM ENC DEC");
        if (!rc) {
            sample_entry *s = PUSH(d, samples);
            s->pid = (unsigned int)v[0];
            s->ts = (unsigned long long)v[1];
            s->sm = (unsigned int)v[2];
            s->mem = (unsigned int)v[3];
            s->enc = (unsigned int)v[4];
            s->dec = (unsigned int)v[5];
        }
    } else if (strcmp(k, "accounting") == 0) {
        rc = parse_fixed_ints(&L, 7, v,
                              "accounting PID GPU_UTIL MEM_UTIL MAX_MEMORY_BYTES START_TIME_US TIME_MS IS_RUNNING");
        if (!rc) {
            acct_entry *a = PUSH(d, accts);
            a->pid = (unsigned int)v[0];
            a->gpu = (unsigned int)v[1];
            a->mem = (unsigned int)v[2];
            a->maxmem = (unsigned long long)v[3];
            a->start = (unsigned long long)v[4];
            a->time_ms = (unsigned long long)v[5];
            a->running = (unsigned int)v[6];
        }
    } else if (strcmp(k, "gpm_metric") == 0 || strcmp(k, "gpm_mig_metric") == 0) {
        rc = parse_gpm_line(d, &L);
    } else if (strcmp(k, "mig_memory") == 0) {
        rc = parse_mig_memory_line(d, &L);
    } else if (strcmp(k, "gpu_instance") == 0) {
        rc = parse_gpu_instance_line(d, &L);
    } else if (strcmp(k, "mig_device") == 0) {
        /* mig_device INDEX UUID GI CI [PROFILE...] */
        long long idx, gi, ci;
        if (L.n < 5 || parse_int(L.tok[1], &idx) || parse_int(L.tok[3], &gi) ||
            parse_int(L.tok[4], &ci)) {
            rc = perr("expected `mig_device INDEX UUID GI CI [PROFILE]`", NULL);
        } else if (idx < 0 || idx >= MAX_MIG) {
            rc = perr("mig_device index out of range (0..15)", L.tok[1]);
        } else {
            mig_entry *m = &d->mig[idx];
            free(m->uuid);
            free(m->profile);
            m->present = 1;
            m->uuid = strdup(L.tok[2]);
            m->profile = L.n > 5 ? strdup(rest_from(&L, 5)) : NULL;
            m->gi = (unsigned int)gi;
            m->ci = (unsigned int)ci;
        }
    } else {
        rc = parse_key_line(d, &L, 0, 0);
    }
out:
    free(L.work);
    return rc;
}

static int scenario_load(void)
{
    const char *path = getenv("FAKE_NVML_SCENARIO");
    scenario_free();
    if (!path || !*path)
        return -1;
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    g_parse_path = path;
    g_parse_line = 0;
    char *buf = NULL;
    size_t cap = 0;
    int cur = -1, rc = 0;
    while (getline(&buf, &cap, f) >= 0) {
        g_parse_line++;
        if (parse_line(buf, &cur)) {
            rc = -1;
            break;
        }
    }
    free(buf);
    fclose(f);
    if (rc)
        scenario_free();
    return rc;
}

/* ---- lookups ---- */

static num_entry *num_find(device_t *d, const char *key, int nidx, long long i0, long long i1)
{
    for (size_t k = d->n_nums; k-- > 0;) { /* last definition wins */
        num_entry *e = &d->nums[k];
        if (strcmp(e->key, key) != 0)
            continue;
        if (nidx >= 1 && e->v[0] != i0)
            continue;
        if (nidx >= 2 && e->v[1] != i1)
            continue;
        return e;
    }
    return NULL;
}

/* value at position pos; the step applies to the last value only */
static long long num_val(num_entry *e, int pos)
{
    long long v = e->v[pos];
    if (e->has_step && pos == e->nvals - 1)
        v = (long long)((unsigned long long)v +
                        (unsigned long long)e->step * (unsigned long long)(g_tick + (long long)READS(e)));
    return v;
}

/* read scalar KEY: NOT_SUPPORTED when absent; counts one read */
static nvmlReturn_t scalar(device_t *d, const char *key, long long *out)
{
    num_entry *e = num_find(d, key, 0, 0, 0);
    if (!e)
        return NVML_ERROR_NOT_SUPPORTED;
    *out = num_val(e, e->nvals - 1);
    READS(e)++;
    return NVML_SUCCESS;
}

static nvmlReturn_t indexed(device_t *d, const char *key, int nidx, long long i0, long long i1,
                            long long *out)
{
    num_entry *e = num_find(d, key, nidx, i0, i1);
    if (!e)
        return NVML_ERROR_NOT_SUPPORTED;
    *out = num_val(e, e->nvals - 1);
    READS(e)++;
    return NVML_SUCCESS;
}

static str_entry *str_find(device_t *d, const char *key, int has_idx, long long idx)
{
    for (size_t k = d->n_strs; k-- > 0;) {
        str_entry *e = &d->strs[k];
        if (strcmp(e->key, key) == 0 && (!has_idx || e->idx == idx))
            return e;
    }
    return NULL;
}

static nvmlReturn_t copy_str(const char *s, char *buf, unsigned int length)
{
    if (!buf)
        return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(s);
    if (n + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, n + 1);
    return NVML_SUCCESS;
}

static int err_find(device_t *d, int fn)
{
    for (size_t k = d->n_errs; k-- > 0;)
        if (d->errs[k].fn == fn)
            return d->errs[k].code;
    return 0;
}

static int override_code(device_t *d, int fn)
{
    int c = d ? err_find(d, fn) : 0;
    if (!c)
        c = err_find(&g_sys, fn);
    return c;
}

/* ---- handles ---- */

/* resolves a handle into (dev, slot); returns 0 if it is one of ours */
static int handle_decode(nvmlDevice_t h, int *dev, int *slot)
{
    uintptr_t p = (uintptr_t)h;
    uintptr_t a = (uintptr_t)g_handles, b = a + sizeof g_handles;
    if (h && p >= a && p < b && (p - a) % sizeof(g_handles[0]) == 0) {
        *dev = (int)((p - a) / sizeof(g_handles[0]));
        *slot = -1;
        return 0;
    }
    a = (uintptr_t)g_mig_handles;
    b = a + sizeof g_mig_handles;
    if (h && p >= a && p < b && (p - a) % sizeof(g_mig_handles[0][0]) == 0) {
        size_t k = (p - a) / sizeof(g_mig_handles[0][0]);
        *dev = (int)(k / MAX_MIG);
        *slot = (int)(k % MAX_MIG);
        return 0;
    }
    return -1;
}

static nvmlDevice_t dev_handle(int i)
{
    g_handles[i].is_mig = 0;
    g_handles[i].dev = i;
    g_handles[i].slot = -1;
    return &g_handles[i];
}

static nvmlDevice_t mig_handle(int i, int slot)
{
    g_mig_handles[i][slot].is_mig = 1;
    g_mig_handles[i][slot].dev = i;
    g_mig_handles[i][slot].slot = slot;
    return &g_mig_handles[i][slot];
}

static void count_call(int fn, int row)
{
    g_counts[row][fn]++;
}

/* Common entry for calls taking a device handle; lock held.  Counts the call
 * and returns the code the call must fail with, if any. */
#define MIG_NO 0
#define MIG_OK 1
static nvmlReturn_t dev_enter(int fn, nvmlDevice_t h, int mig_policy, device_t **out, int *out_slot)
{
    int di = -1, slot = -1;
    int known = handle_decode(h, &di, &slot) == 0;
    count_call(fn, (known && di < g_ndev) ? di : SYS_SLOT);
    if (g_refcount <= 0)
        return NVML_ERROR_UNINITIALIZED;
    if (!known || di >= g_ndev)
        return NVML_ERROR_INVALID_ARGUMENT;
    device_t *d = &g_dev[di];
    if (slot >= 0 && !d->mig[slot].present)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (d->lost)
        return NVML_ERROR_GPU_IS_LOST;
    int c = override_code(d, fn);
    if (c)
        return c;
    if (slot >= 0 && mig_policy == MIG_NO)
        return NVML_ERROR_NOT_SUPPORTED;
    *out = d;
    *out_slot = slot;
    return NVML_SUCCESS;
}

/* Common entry for calls not tied to a device; lock held. */
static nvmlReturn_t sys_enter(int fn)
{
    count_call(fn, SYS_SLOT);
    if (g_refcount <= 0)
        return NVML_ERROR_UNINITIALIZED;
    return override_code(NULL, fn);
}

#define DEV_BEGIN(FN, H, POLICY)                                  \
    device_t *d = NULL;                                           \
    int slot = -1;                                                \
    nvmlReturn_t rc;                                              \
    LOCK();                                                       \
    rc = dev_enter(FN_##FN, (H), (POLICY), &d, &slot);            \
    if (rc != NVML_SUCCESS) {                                     \
        UNLOCK();                                                 \
        return rc;                                                \
    }                                                             \
    (void)slot

#define RETURN(code) do { nvmlReturn_t r_ = (code); UNLOCK(); return r_; } while (0)

/* ------------------------------------------------------------------ */
/* call-count file                                                     */
/* ------------------------------------------------------------------ */

/* Appends n bytes of line to buf (length *len, capacity *cap), keeping room for "end\n"; 0 on success,
 * -1 (buf freed) when memory runs out. */
static int append(char **buf, size_t *len, size_t *cap, const char *line, int n)
{
    if (*len + (size_t)n + 8 > *cap) {
        size_t bigger = *cap * 2 + (size_t)n;
        char *nb = realloc(*buf, bigger);
        if (!nb) {
            free(*buf);
            return -1;
        }
        *buf = nb;
        *cap = bigger;
    }
    memcpy(*buf + *len, line, (size_t)n);
    *len += (size_t)n;
    return 0;
}

static void flush_counts(void)
{
    const char *path = getenv("FAKE_NVML_CALLS");
    if (!path || !*path)
        return;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    if (!buf)
        return;
    int any = 0;
    char line[160];
    for (int row = 0; row <= MAX_DEV; row++) {
        for (int fn = 0; fn < FN_COUNT; fn++) {
            unsigned long c = g_counts[row][fn];
            if (!c)
                continue;
            any = 1;
            int n = row == SYS_SLOT
                        ? snprintf(line, sizeof line, "system %s %lu\n", fn_names[fn], c)
                        : snprintf(line, sizeof line, "device %d %s %lu\n", row, fn_names[fn], c);
            if (append(&buf, &len, &cap, line, n))
                return;
            g_counts[row][fn] = 0;
        }
    }
    if (any && g_gpm_used) {
        /* not calls but state: GPM samples still allocated, and the most that were at once */
        int n = snprintf(line, sizeof line, "system gpm_samples_live %lu\nsystem gpm_samples_peak %lu\n",
                         g_gpm_live, g_gpm_peak);
        if (append(&buf, &len, &cap, line, n))
            return;
        g_gpm_peak = g_gpm_live;
    }
    if (any && g_pcie_thread_count) {
        int n = snprintf(line, sizeof line, "system pcie_throughput_threads %lu\n", g_pcie_thread_count);
        if (append(&buf, &len, &cap, line, n))
            return;
        g_pcie_thread_count = 0;
    }
    if (any && g_event_sets_used) {
        int n = snprintf(line, sizeof line, "system event_sets_live %lu\n", g_event_sets_live);
        if (append(&buf, &len, &cap, line, n))
            return;
    }
    if (any) {
        memcpy(buf + len, "end\n", 4);
        len += 4;
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            ssize_t w = write(fd, buf, len); /* one write on an O_APPEND fd */
            (void)w;
            close(fd);
        }
    }
    free(buf);
}

static void atfork_child(void)
{
    /* a forked child starts with its own, empty counters */
    memset(g_counts, 0, sizeof g_counts);
    pthread_mutex_init(&g_lock, NULL);
}

__attribute__((constructor)) static void fake_nvml_ctor(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

__attribute__((destructor)) static void fake_nvml_dtor(void)
{
    /* do not hang at exit if another thread died holding the lock */
    int locked = 0;
    for (int i = 0; i < 100 && !locked; i++) {
        if (pthread_mutex_trylock(&g_lock) == 0)
            locked = 1;
        else {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    flush_counts();
    if (locked)
        UNLOCK();
}

/* ------------------------------------------------------------------ */
/* init / shutdown / errors                                            */
/* ------------------------------------------------------------------ */

static nvmlReturn_t do_init(int fn)
{
    LOCK();
    count_call(fn, SYS_SLOT);
    if (g_refcount > 0) {
        g_refcount++;
        RETURN(NVML_SUCCESS);
    }
    const char *tick = getenv("FAKE_NVML_TICK");
    g_tick = (tick && *tick) ? strtoll(tick, NULL, 10) : 0;
    if (scenario_load() != 0)
        RETURN(NVML_ERROR_UNKNOWN);
    long long ie = 0;
    num_entry *e = num_find(&g_sys, "init_error", 0, 0, 0);
    if (e)
        ie = e->v[0];
    if (!ie)
        ie = err_find(&g_sys, fn);
    if (ie) {
        scenario_free();
        RETURN((nvmlReturn_t)ie);
    }
    g_refcount = 1;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return do_init(FN_nvmlInitWithFlags);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init(FN_nvmlInit_v2); }

EXPORT nvmlReturn_t nvmlInit(void) { return do_init(FN_nvmlInit); }

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    LOCK();
    count_call(FN_nvmlShutdown, SYS_SLOT);
    nvmlReturn_t rc = NVML_SUCCESS;
    if (g_refcount <= 0) {
        rc = NVML_ERROR_UNINITIALIZED;
    } else {
        int c = err_find(&g_sys, FN_nvmlShutdown);
        if (c) {
            rc = c;
        } else if (--g_refcount == 0) {
            scenario_free();
        }
    }
    flush_counts();
    RETURN(rc);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    LOCK();
    count_call(FN_nvmlErrorString, SYS_SLOT);
    UNLOCK();
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, becasue ECC is enabled";
    case 23: return "Ran out of critical resources, other than memory";
    case 24: return "The requested frequency is not supported";
    case 25: return "Argument version mismatch";
    case 26: return "The requested functionality has been deprecated";
    case 27: return "The system is not ready for the request";
    case 28: return "No GPUs were found";
    case 29: return "Resource not in correct state to perform requested operation";
    case 30: return "Reset type is not supported";
    case 999: return "Unknown Error";
    default: return "Unknown Error";
    }
}

/* ------------------------------------------------------------------ */
/* system queries                                                      */
/* ------------------------------------------------------------------ */

static nvmlReturn_t sys_string(int fn, const char *key, char *buf, unsigned int length)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(fn);
    if (rc)
        RETURN(rc);
    str_entry *e = str_find(&g_sys, key, 0, 0);
    if (!e)
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    RETURN(copy_str(e->s, buf, length));
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    return sys_string(FN_nvmlSystemGetDriverVersion, "driver_version", version, length);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    return sys_string(FN_nvmlSystemGetNVMLVersion, "nvml_version", version, length);
}

static nvmlReturn_t sys_cuda(int fn, int *out)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(fn);
    if (rc)
        RETURN(rc);
    if (!out)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = scalar(&g_sys, "cuda_driver_version", &v);
    if (rc == NVML_SUCCESS)
        *out = (int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *v)
{
    return sys_cuda(FN_nvmlSystemGetCudaDriverVersion, v);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *v)
{
    return sys_cuda(FN_nvmlSystemGetCudaDriverVersion_v2, v);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlDeviceGetCount_v2);
    if (rc)
        RETURN(rc);
    if (!deviceCount)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = (unsigned int)g_ndev;
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* handle lookup                                                       */
/* ------------------------------------------------------------------ */

/* device-scoped failure of a lookup that found device i */
static nvmlReturn_t lookup_check(int fn, int i)
{
    if (g_dev[i].lost)
        return NVML_ERROR_GPU_IS_LOST;
    return override_code(&g_dev[i], fn);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    LOCK();
    int fn = FN_nvmlDeviceGetHandleByIndex_v2;
    count_call(fn, index < (unsigned int)g_ndev ? (int)index : SYS_SLOT);
    if (g_refcount <= 0)
        RETURN(NVML_ERROR_UNINITIALIZED);
    if (index >= (unsigned int)g_ndev || !device)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    nvmlReturn_t rc = lookup_check(fn, (int)index);
    if (rc)
        RETURN(rc);
    *device = dev_handle((int)index);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    LOCK();
    int fn = FN_nvmlDeviceGetHandleByUUID;
    int found = -1, found_slot = -1;
    if (g_refcount > 0 && uuid) {
        for (int i = 0; i < g_ndev && found < 0; i++) {
            str_entry *e = str_find(&g_dev[i], "uuid", 0, 0);
            if (e && strcmp(e->s, uuid) == 0) {
                found = i;
                break;
            }
            for (int s = 0; s < MAX_MIG; s++) {
                if (g_dev[i].mig[s].present && strcmp(g_dev[i].mig[s].uuid, uuid) == 0) {
                    found = i;
                    found_slot = s;
                    break;
                }
            }
        }
    }
    count_call(fn, found >= 0 ? found : SYS_SLOT);
    if (g_refcount <= 0)
        RETURN(NVML_ERROR_UNINITIALIZED);
    if (!uuid || !device)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (found < 0) {
        int c = override_code(NULL, fn);
        RETURN(c ? c : NVML_ERROR_NOT_FOUND);
    }
    nvmlReturn_t rc = lookup_check(fn, found);
    if (rc)
        RETURN(rc);
    *device = found_slot >= 0 ? mig_handle(found, found_slot) : dev_handle(found);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    LOCK();
    int fn = FN_nvmlDeviceGetHandleByPciBusId_v2;
    int found = -1;
    unsigned int qd, qb, qv;
    int parsed = pciBusId && parse_bus_id(pciBusId, &qd, &qb, &qv) == 0;
    if (g_refcount > 0 && parsed) {
        for (int i = 0; i < g_ndev; i++) {
            unsigned int dd, db, dv;
            str_entry *e = str_find(&g_dev[i], "pci_bus_id", 0, 0);
            if (e && parse_bus_id(e->s, &dd, &db, &dv) == 0 && dd == qd && db == qb && dv == qv) {
                found = i;
                break;
            }
        }
    }
    count_call(fn, found >= 0 ? found : SYS_SLOT);
    if (g_refcount <= 0)
        RETURN(NVML_ERROR_UNINITIALIZED);
    if (!pciBusId || !device || !parsed)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (found < 0) {
        int c = override_code(NULL, fn);
        RETURN(c ? c : NVML_ERROR_NOT_FOUND);
    }
    nvmlReturn_t rc = lookup_check(fn, found);
    if (rc)
        RETURN(rc);
    *device = dev_handle(found);
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* identity                                                            */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    DEV_BEGIN(nvmlDeviceGetIndex, device, MIG_NO);
    if (!index)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *index = (unsigned int)(d - g_dev);
    RETURN(NVML_SUCCESS);
}

static nvmlReturn_t dev_string(device_t *d, const char *key, char *buf, unsigned int length)
{
    str_entry *e = str_find(d, key, 0, 0);
    if (!e)
        return NVML_ERROR_NOT_SUPPORTED;
    return copy_str(e->s, buf, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    DEV_BEGIN(nvmlDeviceGetUUID, device, MIG_OK);
    if (slot >= 0)
        RETURN(copy_str(d->mig[slot].uuid, uuid, length));
    RETURN(dev_string(d, "uuid", uuid, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    DEV_BEGIN(nvmlDeviceGetName, device, MIG_OK);
    if (slot >= 0 && d->mig[slot].profile) {
        str_entry *e = str_find(d, "name", 0, 0);
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s MIG %s", e ? e->s : "NVIDIA", d->mig[slot].profile);
        RETURN(copy_str(tmp, name, length));
    }
    RETURN(dev_string(d, "name", name, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    DEV_BEGIN(nvmlDeviceGetSerial, device, MIG_NO);
    RETURN(dev_string(d, "serial", serial, length));
}

EXPORT nvmlReturn_t nvmlDeviceGetVbiosVersion(nvmlDevice_t device, char *version, unsigned int length)
{
    DEV_BEGIN(nvmlDeviceGetVbiosVersion, device, MIG_NO);
    RETURN(dev_string(d, "vbios_version", version, length));
}

/* one scalar key into an unsigned int / int out-parameter */
#define SCALAR_UINT(FN, KEY)                                           \
    EXPORT nvmlReturn_t FN(nvmlDevice_t device, unsigned int *out)     \
    {                                                                  \
        DEV_BEGIN(FN, device, MIG_NO);                                 \
        if (!out)                                                      \
            RETURN(NVML_ERROR_INVALID_ARGUMENT);                       \
        long long v;                                                   \
        rc = scalar(d, KEY, &v);                                       \
        if (rc == NVML_SUCCESS)                                        \
            *out = (unsigned int)v;                                    \
        RETURN(rc);                                                    \
    }

#define SCALAR_INT(FN, KEY)                                            \
    EXPORT nvmlReturn_t FN(nvmlDevice_t device, int *out)              \
    {                                                                  \
        DEV_BEGIN(FN, device, MIG_NO);                                 \
        if (!out)                                                      \
            RETURN(NVML_ERROR_INVALID_ARGUMENT);                       \
        long long v;                                                   \
        rc = scalar(d, KEY, &v);                                       \
        if (rc == NVML_SUCCESS)                                        \
            *out = (int)v;                                             \
        RETURN(rc);                                                    \
    }

#define SCALAR_ULL(FN, KEY)                                              \
    EXPORT nvmlReturn_t FN(nvmlDevice_t device, unsigned long long *out) \
    {                                                                    \
        DEV_BEGIN(FN, device, MIG_NO);                                   \
        if (!out)                                                        \
            RETURN(NVML_ERROR_INVALID_ARGUMENT);                         \
        long long v;                                                     \
        rc = scalar(d, KEY, &v);                                         \
        if (rc == NVML_SUCCESS)                                          \
            *out = (unsigned long long)v;                                \
        RETURN(rc);                                                      \
    }

/* enum out-parameters (nvmlBrandType_t, nvmlPstates_t, ...) are ints */
SCALAR_INT(nvmlDeviceGetBrand, "brand")
SCALAR_UINT(nvmlDeviceGetMinorNumber, "minor_number")
SCALAR_UINT(nvmlDeviceGetArchitecture, "architecture") /* nvmlDeviceArchitecture_t is unsigned int */

static nvmlReturn_t fill_pci(device_t *d, fake_pci_info_t *pci)
{
    str_entry *e = str_find(d, "pci_bus_id", 0, 0);
    unsigned int dom, bus, dv;
    if (!e || parse_bus_id(e->s, &dom, &bus, &dv))
        return NVML_ERROR_NOT_SUPPORTED;
    long long did = 0x233010DE, ssid = 0;
    num_entry *n = num_find(d, "pci_device_id", 0, 0, 0);
    if (n)
        did = num_val(n, 0);
    n = num_find(d, "pci_sub_system_id", 0, 0, 0);
    if (n)
        ssid = num_val(n, 0);
    memset(pci, 0, sizeof(*pci));
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", dom & 0xFFFFu, bus & 0xFFu, dv & 0xFFu);
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.0", dom, bus & 0xFFu, dv & 0xFFu);
    pci->domain = dom;
    pci->bus = bus;
    pci->device = dv;
    pci->pciDeviceId = (unsigned int)did;
    pci->pciSubSystemId = (unsigned int)ssid;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, fake_pci_info_t *pci)
{
    DEV_BEGIN(nvmlDeviceGetPciInfo_v3, device, MIG_NO);
    if (!pci)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    RETURN(fill_pci(d, pci));
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfoExt(nvmlDevice_t device, fake_pci_info_ext_t *pci)
{
    DEV_BEGIN(nvmlDeviceGetPciInfoExt, device, MIG_NO);
    if (!pci)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (pci->version != FAKE_PCI_INFO_EXT_V1)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    fake_pci_info_t p;
    rc = fill_pci(d, &p);
    if (rc)
        RETURN(rc);
    pci->domain = p.domain;
    pci->bus = p.bus;
    pci->device = p.device;
    pci->pciDeviceId = p.pciDeviceId;
    pci->pciSubSystemId = p.pciSubSystemId;
    pci->baseClass = 0x03; /* display controller */
    pci->subClass = 0x02;  /* 3D controller */
    memcpy(pci->busId, p.busId, sizeof pci->busId);
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* gauges                                                              */
/* ------------------------------------------------------------------ */

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, fake_temperature_v1_t *t)
{
    DEV_BEGIN(nvmlDeviceGetTemperatureV, device, MIG_NO);
    if (!t)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (t->version != FAKE_TEMPERATURE_V1)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (t->sensorType < 0 || t->sensorType >= FAKE_TEMPERATURE_COUNT)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (t->sensorType != 0)
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    long long v;
    rc = scalar(d, "temperature", &v);
    if (rc == NVML_SUCCESS)
        t->temperature = (int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensorType, unsigned int *temp)
{
    DEV_BEGIN(nvmlDeviceGetTemperature, device, MIG_NO);
    if (!temp || sensorType < 0 || sensorType >= FAKE_TEMPERATURE_COUNT)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (sensorType != 0)
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    long long v;
    rc = scalar(d, "temperature", &v);
    if (rc == NVML_SUCCESS)
        *temp = (unsigned int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, int thresholdType, unsigned int *temp)
{
    DEV_BEGIN(nvmlDeviceGetTemperatureThreshold, device, MIG_NO);
    if (!temp || thresholdType < 0 || thresholdType >= FAKE_TEMPERATURE_THRESHOLD_COUNT)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = indexed(d, "temperature_threshold", 1, thresholdType, 0, &v);
    if (rc == NVML_SUCCESS)
        *temp = (unsigned int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMarginTemperature(nvmlDevice_t device, fake_margin_temperature_v1_t *margin)
{
    DEV_BEGIN(nvmlDeviceGetMarginTemperature, device, MIG_NO);
    if (!margin)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (margin->version != FAKE_MARGIN_TEMPERATURE_V1)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    long long v;
    rc = scalar(d, "temperature_margin", &v);
    if (rc == NVML_SUCCESS)
        margin->marginTemperature = (int)v;
    RETURN(rc);
}

/* total, used (allocated), reserved, free */
static nvmlReturn_t read_memory(device_t *d, int slot, unsigned long long *total,
                                unsigned long long *used, unsigned long long *reserved,
                                unsigned long long *freeb)
{
    if (slot >= 0) { /* a MIG device: its own memory, from mig_memory */
        mig_entry *m = &d->mig[slot];
        if (!m->has_memory)
            return NVML_ERROR_NOT_SUPPORTED;
        if (m->memory_err)
            return m->memory_err;
        *total = m->memory_total;
        *used = m->memory_used;
        *reserved = m->memory_reserved;
        unsigned long long taken = *used + *reserved;
        *freeb = taken < *total ? *total - taken : 0;
        return NVML_SUCCESS;
    }
    num_entry *et = num_find(d, "memory_total", 0, 0, 0);
    num_entry *eu = num_find(d, "memory_used", 0, 0, 0);
    if (!et || !eu)
        return NVML_ERROR_NOT_SUPPORTED;
    num_entry *er = num_find(d, "memory_reserved", 0, 0, 0);
    num_entry *ef = num_find(d, "memory_free", 0, 0, 0);
    *total = (unsigned long long)num_val(et, 0);
    *used = (unsigned long long)num_val(eu, 0);
    *reserved = er ? (unsigned long long)num_val(er, 0) : 0;
    if (ef) {
        *freeb = (unsigned long long)num_val(ef, 0);
    } else {
        unsigned long long taken = *used + *reserved;
        *freeb = taken < *total ? *total - taken : 0;
    }
    READS(et)++;
    READS(eu)++;
    if (er)
        READS(er)++;
    if (ef)
        READS(ef)++;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, fake_memory_t *memory)
{
    DEV_BEGIN(nvmlDeviceGetMemoryInfo, device, MIG_OK);
    if (!memory)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    unsigned long long t, u, r, f;
    rc = read_memory(d, slot, &t, &u, &r, &f);
    if (rc)
        RETURN(rc);
    memory->total = t;
    memory->free = f;
    /* v1 "used" = reserved + allocated, as in real NVML (saturating, so a
     * sentinel in memory_used stays a sentinel) */
    memory->used = u + r < u ? ~0ULL : u + r;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, fake_memory_v2_t *memory)
{
    DEV_BEGIN(nvmlDeviceGetMemoryInfo_v2, device, MIG_OK);
    if (!memory)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != FAKE_MEMORY_V2)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    unsigned long long t, u, r, f;
    rc = read_memory(d, slot, &t, &u, &r, &f);
    if (rc)
        RETURN(rc);
    memory->total = t;
    memory->reserved = r;
    memory->free = f;
    memory->used = u;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, fake_utilization_t *u)
{
    DEV_BEGIN(nvmlDeviceGetUtilizationRates, device, MIG_NO);
    if (!u)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    num_entry *eg = num_find(d, "utilization_gpu", 0, 0, 0);
    num_entry *em = num_find(d, "utilization_memory", 0, 0, 0);
    if (!eg || !em)
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    u->gpu = (unsigned int)num_val(eg, 0);
    u->memory = (unsigned int)num_val(em, 0);
    READS(eg)++;
    READS(em)++;
    RETURN(NVML_SUCCESS);
}

static nvmlReturn_t codec_util(device_t *d, const char *key, unsigned int *util, unsigned int *period)
{
    if (!util || !period)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long v;
    nvmlReturn_t rc = scalar(d, key, &v);
    if (rc == NVML_SUCCESS) {
        *util = (unsigned int)v;
        *period = SAMPLING_PERIOD_US;
    }
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period)
{
    DEV_BEGIN(nvmlDeviceGetEncoderUtilization, device, MIG_NO);
    RETURN(codec_util(d, "encoder_utilization", util, period));
}

EXPORT nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *util, unsigned int *period)
{
    DEV_BEGIN(nvmlDeviceGetDecoderUtilization, device, MIG_NO);
    RETURN(codec_util(d, "decoder_utilization", util, period));
}

static const char *const clock_keys[CLOCK_COUNT] = {"clock_graphics", "clock_sm", "clock_memory", "clock_video"};
static const char *const max_clock_keys[CLOCK_COUNT] = {"max_clock_graphics", "max_clock_sm",
                                                        "max_clock_memory", "max_clock_video"};

static nvmlReturn_t clock_read(device_t *d, const char *const *keys, int type, unsigned int *out)
{
    if (!out || type < 0 || type >= CLOCK_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long v;
    nvmlReturn_t rc = scalar(d, keys[type], &v);
    if (rc == NVML_SUCCESS)
        *out = (unsigned int)v;
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *clock)
{
    DEV_BEGIN(nvmlDeviceGetClockInfo, device, MIG_NO);
    RETURN(clock_read(d, clock_keys, type, clock));
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, int type, unsigned int *clock)
{
    DEV_BEGIN(nvmlDeviceGetMaxClockInfo, device, MIG_NO);
    RETURN(clock_read(d, max_clock_keys, type, clock));
}

EXPORT nvmlReturn_t nvmlDeviceGetClock(nvmlDevice_t device, int clockType, int clockId, unsigned int *clockMHz)
{
    DEV_BEGIN(nvmlDeviceGetClock, device, MIG_NO);
    if (clockId < 0 || clockId > 3)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (clockId == 0) /* NVML_CLOCK_ID_CURRENT */
        RETURN(clock_read(d, clock_keys, clockType, clockMHz));
    if (clockId == 3) /* NVML_CLOCK_ID_CUSTOMER_BOOST_MAX */
        RETURN(clock_read(d, max_clock_keys, clockType, clockMHz));
    RETURN(NVML_ERROR_NOT_SUPPORTED); /* application clocks are not modelled */
}

SCALAR_ULL(nvmlDeviceGetCurrentClocksEventReasons, "clocks_event_reasons")
SCALAR_ULL(nvmlDeviceGetCurrentClocksThrottleReasons, "clocks_event_reasons")
SCALAR_INT(nvmlDeviceGetPerformanceState, "pstate")
SCALAR_UINT(nvmlDeviceGetNumFans, "fan_count")

static nvmlReturn_t fan_read(device_t *d, unsigned int fan, unsigned int *speed)
{
    if (!speed)
        return NVML_ERROR_INVALID_ARGUMENT;
    num_entry *n = num_find(d, "fan_count", 0, 0, 0);
    if (n && fan >= (unsigned long long)num_val(n, 0))
        return n && num_val(n, 0) == 0 ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT;
    long long v;
    nvmlReturn_t rc = indexed(d, "fan_speed", 1, fan, 0, &v);
    if (rc == NVML_SUCCESS)
        *speed = (unsigned int)v;
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed)
{
    DEV_BEGIN(nvmlDeviceGetFanSpeed_v2, device, MIG_NO);
    RETURN(fan_read(d, fan, speed));
}

EXPORT nvmlReturn_t nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    DEV_BEGIN(nvmlDeviceGetFanSpeed, device, MIG_NO);
    RETURN(fan_read(d, 0, speed));
}

SCALAR_INT(nvmlDeviceGetPersistenceMode, "persistence_mode")
SCALAR_INT(nvmlDeviceGetAccountingMode, "accounting_mode")
SCALAR_INT(nvmlDeviceGetComputeMode, "compute_mode")

static nvmlReturn_t pair_read(device_t *d, const char *key, long long *a, long long *b)
{
    num_entry *e = num_find(d, key, 0, 0, 0);
    if (!e)
        return NVML_ERROR_NOT_SUPPORTED;
    *a = num_val(e, 0);
    *b = num_val(e, 1);
    READS(e)++;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    DEV_BEGIN(nvmlDeviceGetMigMode, device, MIG_NO);
    if (!currentMode || !pendingMode)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long a, b;
    rc = pair_read(d, "mig_mode", &a, &b);
    if (rc == NVML_SUCCESS) {
        *currentMode = (unsigned int)a;
        *pendingMode = (unsigned int)b;
    }
    RETURN(rc);
}

SCALAR_UINT(nvmlDeviceGetPowerUsage, "power_usage")
SCALAR_UINT(nvmlDeviceGetEnforcedPowerLimit, "power_limit")
SCALAR_UINT(nvmlDeviceGetPowerManagementLimit, "power_limit")
SCALAR_ULL(nvmlDeviceGetTotalEnergyConsumption, "energy")

EXPORT nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, int *current, int *pending)
{
    DEV_BEGIN(nvmlDeviceGetEccMode, device, MIG_NO);
    if (!current || !pending)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long a, b;
    rc = pair_read(d, "ecc_mode", &a, &b);
    if (rc == NVML_SUCCESS) {
        *current = (int)a;
        *pending = (int)b;
    }
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int errorType, int counterType,
                                                unsigned long long *eccCounts)
{
    DEV_BEGIN(nvmlDeviceGetTotalEccErrors, device, MIG_NO);
    if (!eccCounts || errorType < 0 || errorType > 1 || counterType < 0 || counterType > 1)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = indexed(d, "ecc_errors", 2, errorType, counterType, &v);
    if (rc == NVML_SUCCESS)
        *eccCounts = (unsigned long long)v;
    RETURN(rc);
}

/* ---- field values ---- */

static long long now_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
}

static void field_store(fake_field_value_t *out, int type, double dv, unsigned long long uv)
{
    memset(&out->value, 0, sizeof out->value);
    out->valueType = type;
    switch (type) {
    case VT_DOUBLE: out->value.dVal = dv; break;
    case VT_UINT: out->value.uiVal = (unsigned int)uv; break;
    case VT_ULONG: out->value.ulVal = (unsigned long)uv; break;
    case VT_SLL: out->value.sllVal = (long long)uv; break;
    case VT_SINT: out->value.siVal = (int)uv; break;
    case VT_USHORT: out->value.usVal = (unsigned short)uv; break;
    default: out->value.ullVal = uv; break;
    }
}

static double field_dval(field_entry *f)
{
    double t = (double)(g_tick + (long long)READS(f));
    return f->base.d + (f->has_step ? f->step.d * t : 0.0);
}

static unsigned long long field_uval(field_entry *f)
{
    unsigned long long t = (unsigned long long)(g_tick + (long long)READS(f));
    return f->base.u + (f->has_step ? f->step.u * t : 0ULL);
}

static void field_fill(device_t *d, fake_field_value_t *v)
{
    field_entry *hit = NULL;
    v->timestamp = now_us();
    v->latencyUsec = 0;
    /* 1. exact (fieldId, scopeId); later lines win */
    for (size_t k = d->n_fields; k-- > 0 && !hit;)
        if (d->fields[k].fid == v->fieldId && d->fields[k].scoped && d->fields[k].scope == v->scopeId)
            hit = &d->fields[k];
    /* 2. an entry without a scope */
    for (size_t k = d->n_fields; k-- > 0 && !hit;)
        if (d->fields[k].fid == v->fieldId && !d->fields[k].scoped)
            hit = &d->fields[k];
    if (hit) {
        if (hit->err) {
            v->nvmlReturn = hit->err;
            v->valueType = hit->type;
            memset(&v->value, 0, sizeof v->value);
            return;
        }
        field_store(v, hit->type, field_dval(hit), field_uval(hit));
        READS(hit)++;
        v->nvmlReturn = NVML_SUCCESS;
        return;
    }
    /* 3. scopeId UINT_MAX: sum of all scoped entries of that field */
    if (v->scopeId == 0xFFFFFFFFu) {
        int type = -1;
        double ds = 0;
        unsigned long long us = 0;
        for (size_t k = 0; k < d->n_fields; k++) {
            field_entry *f = &d->fields[k];
            if (f->fid != v->fieldId || !f->scoped || f->err)
                continue;
            if (type < 0)
                type = f->type;
            if (f->type == VT_DOUBLE) {
                ds += field_dval(f);
                us += (unsigned long long)field_dval(f);
            } else {
                us += field_uval(f);
                ds += (double)field_uval(f);
            }
            READS(f)++;
        }
        if (type >= 0) {
            field_store(v, type, ds, us);
            v->nvmlReturn = NVML_SUCCESS;
            return;
        }
    }
    memset(&v->value, 0, sizeof v->value);
    v->valueType = VT_ULL;
    v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, fake_field_value_t *values)
{
    DEV_BEGIN(nvmlDeviceGetFieldValues, device, MIG_NO);
    if (!values || valuesCount < 0)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < valuesCount; i++)
        field_fill(d, &values[i]);
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* PCIe                                                                */
/* ------------------------------------------------------------------ */

SCALAR_UINT(nvmlDeviceGetCurrPcieLinkGeneration, "pcie_gen")
SCALAR_UINT(nvmlDeviceGetMaxPcieLinkGeneration, "pcie_gen_max")
SCALAR_UINT(nvmlDeviceGetGpuMaxPcieLinkGeneration, "pcie_gen_max")
SCALAR_UINT(nvmlDeviceGetCurrPcieLinkWidth, "pcie_width")
SCALAR_UINT(nvmlDeviceGetMaxPcieLinkWidth, "pcie_width_max")
SCALAR_UINT(nvmlDeviceGetPcieReplayCounter, "pcie_replays")

EXPORT nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, int counter, unsigned int *value)
{
    DEV_BEGIN(nvmlDeviceGetPcieThroughput, device, MIG_NO);
    pid_t tid = (pid_t)syscall(SYS_gettid);
    unsigned long seen = 0;
    while (seen < g_pcie_thread_count && g_pcie_threads[seen] != tid)
        seen++;
    if (seen == g_pcie_thread_count && g_pcie_thread_count < MAX_PCIE_THREADS)
        g_pcie_threads[g_pcie_thread_count++] = tid;
    if (!value || counter < 0 || counter > 1)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = scalar(d, counter == 0 ? "pcie_tx_kbps" : "pcie_rx_kbps", &v);
    UNLOCK();
    if (rc != NVML_SUCCESS)
        return rc;
    /* the real call samples the link for 20 ms; so do we, without the lock */
    struct timespec ts = {0, 20 * 1000 * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    *value = (unsigned int)v;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ */
/* NVLink                                                              */
/* ------------------------------------------------------------------ */

static nvmlReturn_t link_read(device_t *d, const char *key, unsigned int link, long long *out)
{
    if (link >= NVLINK_MAX_LINKS)
        return NVML_ERROR_INVALID_ARGUMENT;
    return indexed(d, key, 1, link, 0, out);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link, int *isActive)
{
    DEV_BEGIN(nvmlDeviceGetNvLinkState, device, MIG_NO);
    if (!isActive)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = link_read(d, "nvlink_state", link, &v);
    if (rc == NVML_SUCCESS)
        *isActive = (int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkVersion(nvmlDevice_t device, unsigned int link, unsigned int *version)
{
    DEV_BEGIN(nvmlDeviceGetNvLinkVersion, device, MIG_NO);
    if (!version)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = link_read(d, "nvlink_version", link, &v);
    if (rc == NVML_SUCCESS)
        *version = (unsigned int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link, int *type)
{
    DEV_BEGIN(nvmlDeviceGetNvLinkRemoteDeviceType, device, MIG_NO);
    if (!type)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long v;
    rc = link_read(d, "nvlink_remote_type", link, &v);
    if (rc == NVML_SUCCESS)
        *type = (int)v;
    RETURN(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link, fake_pci_info_t *pci)
{
    DEV_BEGIN(nvmlDeviceGetNvLinkRemotePciInfo_v2, device, MIG_NO);
    if (!pci || link >= NVLINK_MAX_LINKS)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    str_entry *e = str_find(d, "nvlink_remote_pci", 1, link);
    unsigned int dom, bus, dv;
    if (!e || parse_bus_id(e->s, &dom, &bus, &dv))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    memset(pci, 0, sizeof(*pci));
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", dom & 0xFFFFu, bus & 0xFFu, dv & 0xFFu);
    snprintf(pci->busId, sizeof pci->busId, "%08X:%02X:%02X.0", dom, bus & 0xFFu, dv & 0xFFu);
    pci->domain = dom;
    pci->bus = bus;
    pci->device = dv;
    pci->pciDeviceId = e->has_num ? (unsigned int)e->num : 0;
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* processes                                                           */
/* ------------------------------------------------------------------ */

static nvmlReturn_t running_procs(device_t *d, int slot, int graphics, unsigned int *infoCount,
                                  fake_process_info_t *infos)
{
    if (!infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int need = 0;
    for (size_t k = 0; k < d->n_procs; k++) {
        proc_entry *p = &d->procs[k];
        if (p->graphics != graphics)
            continue;
        if (slot >= 0 && (p->gi != d->mig[slot].gi || p->ci != d->mig[slot].ci))
            continue;
        need++;
    }
    if (need == 0) {
        *infoCount = 0;
        return NVML_SUCCESS;
    }
    if (*infoCount < need) {
        *infoCount = need;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (!infos)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (size_t k = 0; k < d->n_procs; k++) {
        proc_entry *p = &d->procs[k];
        if (p->graphics != graphics)
            continue;
        if (slot >= 0 && (p->gi != d->mig[slot].gi || p->ci != d->mig[slot].ci))
            continue;
        infos[n].pid = p->pid;
        infos[n].usedGpuMemory = p->mem;
        infos[n].gpuInstanceId = p->gi;
        infos[n].computeInstanceId = p->ci;
        n++;
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                            fake_process_info_t *infos)
{
    DEV_BEGIN(nvmlDeviceGetComputeRunningProcesses_v3, device, MIG_OK);
    RETURN(running_procs(d, slot, 0, infoCount, infos));
}

EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t device, unsigned int *infoCount,
                                                             fake_process_info_t *infos)
{
    DEV_BEGIN(nvmlDeviceGetGraphicsRunningProcesses_v3, device, MIG_OK);
    RETURN(running_procs(d, slot, 1, infoCount, infos));
}

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device, fake_process_util_sample_t *utilization,
                                                    unsigned int *processSamplesCount,
                                                    unsigned long long lastSeenTimeStamp)
{
    DEV_BEGIN(nvmlDeviceGetProcessUtilization, device, MIG_NO);
    if (!processSamplesCount)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long cur, pend;
    if (pair_read(d, "mig_mode", &cur, &pend) == NVML_SUCCESS && cur == 1)
        RETURN(NVML_ERROR_NOT_SUPPORTED); /* not supported on MIG-enabled GPUs */
    unsigned int need = 0;
    for (size_t k = 0; k < d->n_samples; k++)
        if (d->samples[k].ts > lastSeenTimeStamp)
            need++;
    if (need == 0)
        RETURN(NVML_ERROR_NOT_FOUND);
    /* sizing call (buffer NULL) or a buffer too small */
    if (!utilization || *processSamplesCount < need) {
        *processSamplesCount = need;
        RETURN(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int n = 0;
    for (size_t k = 0; k < d->n_samples; k++) {
        sample_entry *s = &d->samples[k];
        if (s->ts <= lastSeenTimeStamp)
            continue;
        utilization[n].pid = s->pid;
        utilization[n].timeStamp = s->ts;
        utilization[n].smUtil = s->sm;
        utilization[n].memUtil = s->mem;
        utilization[n].encUtil = s->enc;
        utilization[n].decUtil = s->dec;
        n++;
    }
    *processSamplesCount = n;
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* accounting                                                          */
/* ------------------------------------------------------------------ */

static int accounting_on(device_t *d)
{
    num_entry *e = num_find(d, "accounting_mode", 0, 0, 0);
    return e && num_val(e, 0) != 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetAccountingBufferSize(nvmlDevice_t device, unsigned int *bufferSize)
{
    DEV_BEGIN(nvmlDeviceGetAccountingBufferSize, device, MIG_NO);
    if (!bufferSize)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (!num_find(d, "accounting_mode", 0, 0, 0))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    *bufferSize = ACCOUNTING_BUFFER_SIZE;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetAccountingPids(nvmlDevice_t device, unsigned int *count, unsigned int *pids)
{
    DEV_BEGIN(nvmlDeviceGetAccountingPids, device, MIG_NO);
    if (!count)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (!accounting_on(d))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    unsigned int need = (unsigned int)d->n_accts;
    if (*count < need || (need > 0 && !pids)) {
        *count = need;
        RETURN(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int i = 0; i < need; i++)
        pids[i] = d->accts[i].pid;
    *count = need;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetAccountingStats(nvmlDevice_t device, unsigned int pid, fake_accounting_stats_t *stats)
{
    DEV_BEGIN(nvmlDeviceGetAccountingStats, device, MIG_NO);
    if (!stats)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (!accounting_on(d))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    for (size_t k = d->n_accts; k-- > 0;) {
        acct_entry *a = &d->accts[k];
        if (a->pid != pid)
            continue;
        memset(stats, 0, sizeof(*stats));
        stats->gpuUtilization = a->gpu;
        stats->memoryUtilization = a->mem;
        stats->maxMemoryUsage = a->maxmem;
        stats->time = a->time_ms;
        stats->startTime = a->start;
        stats->isRunning = a->running;
        RETURN(NVML_SUCCESS);
    }
    RETURN(NVML_ERROR_NOT_FOUND);
}

/* ------------------------------------------------------------------ */
/* MIG                                                                 */
/* ------------------------------------------------------------------ */

static unsigned int mig_max(device_t *d)
{
    num_entry *e = num_find(d, "mig_max", 0, 0, 0);
    if (e)
        return (unsigned int)num_val(e, 0);
    e = num_find(d, "mig_mode", 0, 0, 0);
    if (e && num_val(e, 0) == 1)
        return 7;
    return 0; /* "Returns zero if MIG is not supported or enabled" */
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    DEV_BEGIN(nvmlDeviceGetMaxMigDeviceCount, device, MIG_NO);
    if (!count)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *count = mig_max(d);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *migDevice)
{
    DEV_BEGIN(nvmlDeviceGetMigDeviceHandleByIndex, device, MIG_NO);
    if (!migDevice)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (!num_find(d, "mig_mode", 0, 0, 0))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    unsigned int max = mig_max(d);
    if (index >= max || index >= MAX_MIG)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (!d->mig[index].present)
        RETURN(NVML_ERROR_NOT_FOUND);
    *migDevice = mig_handle((int)(d - g_dev), (int)index);
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    DEV_BEGIN(nvmlDeviceGetGpuInstanceId, device, MIG_OK);
    if (!id || slot < 0)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *id = d->mig[slot].gi;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    DEV_BEGIN(nvmlDeviceGetComputeInstanceId, device, MIG_OK);
    if (!id || slot < 0)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *id = d->mig[slot].ci;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    DEV_BEGIN(nvmlDeviceIsMigDeviceHandle, device, MIG_OK);
    if (!isMigDevice)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *isMigDevice = slot >= 0 ? 1u : 0u;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
    DEV_BEGIN(nvmlDeviceGetDeviceHandleFromMigDeviceHandle, migDevice, MIG_OK);
    if (!device || slot < 0)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    *device = dev_handle((int)(d - g_dev));
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id,
                                                 nvmlGpuInstance_t *gpuInstance)
{
    DEV_BEGIN(nvmlDeviceGetGpuInstanceById, device, MIG_NO);
    if (!gpuInstance)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    num_entry *mode = num_find(d, "mig_mode", 0, 0, 0);
    if (!mode || num_val(mode, 0) != 1)
        RETURN(NVML_ERROR_NOT_SUPPORTED); /* "If device doesn't have MIG mode enabled" */
    int di = (int)(d - g_dev);
    for (int i = 0; i < MAX_GI; i++) {
        if (d->gis[i].present && d->gis[i].id == id) {
            g_gi_handles[di][i].dev = di;
            g_gi_handles[di][i].slot = i;
            *gpuInstance = &g_gi_handles[di][i];
            RETURN(NVML_SUCCESS);
        }
    }
    RETURN(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, fake_gpu_instance_info_t *info)
{
    /* a GPU instance handle counts for its parent GPU; one that is not ours is INVALID_ARGUMENT */
    uintptr_t p = (uintptr_t)gpuInstance, a = (uintptr_t)g_gi_handles, b = a + sizeof g_gi_handles;
    int known = gpuInstance && p >= a && p < b && (p - a) % sizeof(g_gi_handles[0][0]) == 0;
    int di = known ? gpuInstance->dev : -1, slot = known ? gpuInstance->slot : -1;
    LOCK();
    count_call(FN_nvmlGpuInstanceGetInfo, known && di < g_ndev ? di : SYS_SLOT);
    if (g_refcount <= 0)
        RETURN(NVML_ERROR_UNINITIALIZED);
    if (!known || di >= g_ndev || !g_dev[di].gis[slot].present)
        RETURN(NVML_ERROR_INVALID_ARGUMENT); /* a scenario re-read since may have dropped it */
    device_t *d = &g_dev[di];
    if (d->lost)
        RETURN(NVML_ERROR_GPU_IS_LOST);
    int c = override_code(d, FN_nvmlGpuInstanceGetInfo);
    if (c)
        RETURN(c);
    if (!info)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    info->device = dev_handle(di);
    info->id = d->gis[slot].id;
    info->profileId = d->gis[slot].profile_id;
    info->placement.start = d->gis[slot].start;
    info->placement.size = d->gis[slot].size;
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* GPM                                                                 */
/* ------------------------------------------------------------------ */

/* What a sample records.  Live samples are kept in a list, so that a freed, foreign or never-allocated
 * pointer is recognised without reading it. */
#define GPM_UNFILLED -2
struct nvmlGpmSample_st {
    struct nvmlGpmSample_st *next;
    int dev;           /* GPU index, GPM_UNFILLED until nvmlGpmSampleGet */
    int gi;            /* GPU instance id, -1 for the whole GPU */
    long long taken_ns; /* CLOCK_MONOTONIC */
};
static struct nvmlGpmSample_st *g_gpm_samples;

static int gpm_live(nvmlGpmSample_t s)
{
    for (struct nvmlGpmSample_st *p = g_gpm_samples; p; p = p->next)
        if (p == s)
            return 1;
    return 0;
}

static long long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int gpm_supported(device_t *d)
{
    num_entry *e = num_find(d, "gpm_supported", 0, 0, 0);
    return e && num_val(e, 0) != 0;
}

EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, fake_gpm_support_t *gpmSupport)
{
    DEV_BEGIN(nvmlGpmQueryDeviceSupport, device, MIG_OK);
    if (!gpmSupport)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (gpmSupport->version != GPM_SUPPORT_VERSION)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    gpmSupport->isSupportedDevice = gpm_supported(d) ? 1u : 0u;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *gpmSample)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlGpmSampleAlloc);
    if (rc)
        RETURN(rc);
    if (!gpmSample)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    struct nvmlGpmSample_st *s = calloc(1, sizeof *s);
    if (!s)
        RETURN(20); /* NVML_ERROR_MEMORY */
    s->dev = GPM_UNFILLED;
    s->next = g_gpm_samples;
    g_gpm_samples = s;
    g_gpm_used = 1;
    if (++g_gpm_live > g_gpm_peak)
        g_gpm_peak = g_gpm_live;
    *gpmSample = s;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t gpmSample)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlGpmSampleFree);
    if (rc)
        RETURN(rc);
    for (struct nvmlGpmSample_st **p = &g_gpm_samples; *p; p = &(*p)->next) {
        if (*p == gpmSample) {
            *p = gpmSample->next;
            free(gpmSample);
            g_gpm_live--;
            RETURN(NVML_SUCCESS);
        }
    }
    RETURN(NVML_ERROR_INVALID_ARGUMENT); /* not a live sample: freed twice, or never allocated */
}

static nvmlReturn_t gpm_fill(device_t *d, int gi, nvmlGpmSample_t s)
{
    if (!gpm_live(s))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpm_supported(d))
        return NVML_ERROR_NOT_SUPPORTED;
    s->dev = (int)(d - g_dev);
    s->gi = gi;
    s->taken_ns = monotonic_ns();
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t gpmSample)
{
    /* "supports the device handle and MIG device handle": a MIG device samples its GPU instance */
    DEV_BEGIN(nvmlGpmSampleGet, device, MIG_OK);
    RETURN(gpm_fill(d, slot >= 0 ? (int)d->mig[slot].gi : -1, gpmSample));
}

static int mig_on(device_t *d)
{
    num_entry *e = num_find(d, "mig_mode", 0, 0, 0);
    return e && num_val(e, 0) == 1;
}

EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId, nvmlGpmSample_t gpmSample)
{
    DEV_BEGIN(nvmlGpmMigSampleGet, device, MIG_NO);
    if (!mig_on(d))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    for (int k = 0; k < MAX_MIG; k++)
        if (d->mig[k].present && d->mig[k].gi == gpuInstanceId)
            RETURN(gpm_fill(d, (int)gpuInstanceId, gpmSample));
    RETURN(NVML_ERROR_INVALID_ARGUMENT); /* no such GPU instance */
}

static gpm_entry *gpm_find(device_t *d, int gi, unsigned int id)
{
    for (size_t k = d->n_gpms; k-- > 0;) /* last definition wins */
        if (d->gpms[k].gi == gi && d->gpms[k].id == id)
            return &d->gpms[k];
    return NULL;
}

/* Values come from the scenario (`gpm_metric`, `gpm_mig_metric`) as they are, whatever the window; a
 * metric the scenario does not name is NOT_SUPPORTED in its own entry.  The call refuses (2) two
 * samples that are not live, are one and the same, belong to different GPUs or GPU instances, or were
 * not taken in order more than 100 ms apart: nvml.h asks for that interval and does not say what
 * happens otherwise, so the fake makes a caller that does not wait fail loudly. */
EXPORT nvmlReturn_t nvmlGpmMetricsGet(fake_gpm_metrics_get_t *metricsGet)
{
    LOCK();
    nvmlGpmSample_t s1 = metricsGet ? metricsGet->sample1 : NULL;
    nvmlGpmSample_t s2 = metricsGet ? metricsGet->sample2 : NULL;
    int live = s1 && gpm_live(s1) && s2 && gpm_live(s2);
    int row = live && s1->dev >= 0 && s1->dev < g_ndev ? s1->dev : SYS_SLOT;
    count_call(FN_nvmlGpmMetricsGet, row);
    if (g_refcount <= 0)
        RETURN(NVML_ERROR_UNINITIALIZED);
    device_t *d = row == SYS_SLOT ? NULL : &g_dev[row];
    int c = override_code(d, FN_nvmlGpmMetricsGet);
    if (c)
        RETURN(c);
    if (!metricsGet)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (metricsGet->version != GPM_METRICS_GET_VERSION)
        RETURN(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!live || s1 == s2 || !d || s1->dev != s2->dev || s1->gi != s2->gi)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (s2->taken_ns - s1->taken_ns <= GPM_MIN_INTERVAL_NS)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (metricsGet->numMetrics == 0 || metricsGet->numMetrics > GPM_METRIC_MAX)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    if (d->lost)
        RETURN(NVML_ERROR_GPU_IS_LOST);
    for (unsigned int i = 0; i < metricsGet->numMetrics; i++) {
        fake_gpm_metric_t *m = &metricsGet->metrics[i];
        gpm_entry *g = gpm_find(d, s1->gi, m->metricId);
        m->nvmlReturn = !g ? NVML_ERROR_NOT_SUPPORTED : g->err;
        m->value = g && !g->err ? g->value : 0.0;
        m->metricInfo.shortName = m->metricInfo.longName = m->metricInfo.unit = NULL;
    }
    RETURN(NVML_SUCCESS);
}

/* ------------------------------------------------------------------ */
/* events                                                              */
/* ------------------------------------------------------------------ */

/* mirrors nvmlEventData_t */
typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;      /* the XID, for nvmlEventTypeXidCriticalError */
    unsigned int gpuInstanceId;        /* 0xFFFFFFFF where not attributable to a GPU instance */
    unsigned int computeInstanceId;
} fake_event_data_t;
_Static_assert(sizeof(fake_event_data_t) == 32, "nvmlEventData_t layout");
#define NVML_ERROR_TIMEOUT 10

/* an opaque nvmlEventSet_t: what each device registered */
struct nvmlEventSet_st {
    unsigned long long mask[MAX_DEV];
    struct nvmlEventSet_st *next;
};
static struct nvmlEventSet_st *g_event_sets;

/* Events come from the FIFO the scenario names (`system event_source PATH`), one line each:
 * `GPU TYPE DATA [GI CI]`.  It is opened once, read and write and non-blocking, so that a writer never
 * blocks and the fake never sees end-of-file; a line is delivered by nvmlEventSetWait_v2 to a set that
 * registered TYPE for GPU, and dropped otherwise (as NVML records only registered events). */
static int g_event_fd = -1;
static char g_event_buf[4096];
static size_t g_event_len;

static int event_set_live(struct nvmlEventSet_st *set)
{
    for (struct nvmlEventSet_st *p = g_event_sets; p; p = p->next)
        if (p == set)
            return 1;
    return 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes)
{
    DEV_BEGIN(nvmlDeviceGetSupportedEventTypes, device, MIG_NO);
    if (!eventTypes)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long mask;
    rc = scalar(d, "event_types", &mask);
    if (rc == NVML_SUCCESS)
        *eventTypes = (unsigned long long)mask;
    RETURN(rc);
}

/* "If function reports NVML_ERROR_NOT_SUPPORTED, event set can still be used. None of the requested
 * eventTypes are registered in that case." (nvml.h) */
EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                             struct nvmlEventSet_st *set)
{
    DEV_BEGIN(nvmlDeviceRegisterEvents, device, MIG_NO);
    if (!event_set_live(set))
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    long long mask;
    if (scalar(d, "event_types", &mask) != NVML_SUCCESS || (eventTypes & ~(unsigned long long)mask))
        RETURN(NVML_ERROR_NOT_SUPPORTED);
    set->mask[d - g_dev] |= eventTypes;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlEventSetCreate(struct nvmlEventSet_st **set)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlEventSetCreate);
    if (rc)
        RETURN(rc);
    if (!set)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (!s)
        RETURN(20); /* NVML_ERROR_MEMORY */
    s->next = g_event_sets;
    g_event_sets = s;
    g_event_sets_live++;
    g_event_sets_used = 1;
    *set = s;
    RETURN(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlEventSetFree(struct nvmlEventSet_st *set)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlEventSetFree);
    if (rc)
        RETURN(rc);
    for (struct nvmlEventSet_st **p = &g_event_sets; *p; p = &(*p)->next) {
        if (*p == set) {
            *p = set->next;
            free(set);
            g_event_sets_live--;
            RETURN(NVML_SUCCESS);
        }
    }
    RETURN(NVML_ERROR_INVALID_ARGUMENT); /* freed twice, or never created */
}

/* The next whole line from the event FIFO, waiting at most until deadline_ns; 0 if none came. */
static int event_line(char *line, size_t size, long long deadline_ns)
{
    for (;;) {
        char *nl = memchr(g_event_buf, '\n', g_event_len);
        if (nl) {
            size_t n = (size_t)(nl - g_event_buf);
            size_t keep = n < size ? n : size - 1;
            memcpy(line, g_event_buf, keep);
            line[keep] = 0;
            g_event_len -= n + 1;
            memmove(g_event_buf, nl + 1, g_event_len);
            return 1;
        }
        if (g_event_len == sizeof g_event_buf)
            g_event_len = 0; /* a line longer than the buffer: dropped */
        long long left_ns = deadline_ns - monotonic_ns();
        if (left_ns <= 0)
            return 0;
        if (g_event_fd < 0) {
            struct timespec ts = {left_ns / 1000000000LL, left_ns % 1000000000LL};
            nanosleep(&ts, NULL);
            return 0;
        }
        struct pollfd pfd = {g_event_fd, POLLIN, 0};
        int timeout_ms = (int)((left_ns + 999999) / 1000000);
        if (poll(&pfd, 1, timeout_ms) <= 0)
            continue;
        ssize_t got = read(g_event_fd, g_event_buf + g_event_len, sizeof g_event_buf - g_event_len);
        if (got > 0)
            g_event_len += (size_t)got;
    }
}

/* "If some events are ready to be delivered at the time of the call, function returns immediately. If
 * there are no events ready to be delivered, function sleeps till event arrives but not longer than
 * specified timeout." Returns TIMEOUT (10) when none came, and GPU_IS_LOST where a registered GPU is
 * lost. The lock is not held while waiting, so other threads' calls go on. */
EXPORT nvmlReturn_t nvmlEventSetWait_v2(struct nvmlEventSet_st *set, fake_event_data_t *data,
                                        unsigned int timeoutms)
{
    LOCK();
    nvmlReturn_t rc = sys_enter(FN_nvmlEventSetWait_v2);
    if (rc)
        RETURN(rc);
    if (!event_set_live(set) || !data)
        RETURN(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < g_ndev; i++)
        if (set->mask[i] && g_dev[i].lost)
            RETURN(NVML_ERROR_GPU_IS_LOST);
    if (g_event_fd < 0) {
        str_entry *e = str_find(&g_sys, "event_source", 0, 0);
        if (e)
            g_event_fd = open(e->s, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    }
    UNLOCK();
    long long deadline = monotonic_ns() + (long long)timeoutms * 1000000LL;
    char line[256];
    while (event_line(line, sizeof line, deadline)) {
        unsigned int gpu, gi = 0xFFFFFFFFu, ci = 0xFFFFFFFFu;
        long long type, value;
        int n = sscanf(line, "%u %lli %lli %u %u", &gpu, &type, &value, &gi, &ci);
        if (n != 3 && n != 5)
            continue;
        LOCK();
        if (!event_set_live(set))
            RETURN(NVML_ERROR_INVALID_ARGUMENT);
        if ((int)gpu < g_ndev && (set->mask[gpu] & (unsigned long long)type)) {
            data->device = dev_handle((int)gpu);
            data->eventType = (unsigned long long)type;
            data->eventData = (unsigned long long)value;
            data->gpuInstanceId = gi;
            data->computeInstanceId = ci;
            RETURN(NVML_SUCCESS);
        }
        UNLOCK();
    }
    return NVML_ERROR_TIMEOUT;
}
