// Log lines (through the C shim: Apache's logging call is variadic) and the clock.
import CPeruserShim
import Glibc

func log(_ level: Int, _ text: String) {
    peruser_shim_log(Int32(level), text)
}

/// While Apache starts (configtest included), to the console as well.
func logStartup(_ level: Int, _ text: String) {
    peruser_shim_log_startup(Int32(level), text)
}

func monotonicMilliseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
}
