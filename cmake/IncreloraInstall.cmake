# install(): the headers, the library and a CMake package so that consumers write
#   find_package(increlora REQUIRED)  target_link_libraries(app PRIVATE increlora::increlora)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(INCRELORA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/increlora)
install(TARGETS increlora EXPORT increloraTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/increlora DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT increloraTargets NAMESPACE increlora:: DESTINATION ${INCRELORA_CMAKE_DIR})
configure_package_config_file(cmake/increloraConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/increloraConfig.cmake INSTALL_DESTINATION ${INCRELORA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/increloraConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/increloraConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/increloraConfigVersion.cmake DESTINATION ${INCRELORA_CMAKE_DIR})
