# kvcache-operator: the controller binary (controller + kube + the cpprestsdk AdminClient,
# CLI11, spdlog, Pistache for /healthz /readyz /metrics).
add_executable(kvcache-operator ${CMAKE_CURRENT_SOURCE_DIR}/main.cc)
target_link_libraries(kvcache-operator PRIVATE kvcache_controller kvcache_kube kvcache_admin_client
                      PkgConfig::Pistache CLI11::CLI11 spdlog::spdlog Threads::Threads)
