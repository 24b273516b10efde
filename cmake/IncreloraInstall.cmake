# install(): the headers, the libraries and a CMake package so that consumers write
#   find_package(increlora REQUIRED)                            target_link_libraries(app PRIVATE increlora::increlora)
#   find_package(increlora REQUIRED COMPONENTS models tasks)    ... increlora::models increlora::tasks
# Each component has an export set of its own, so that the package can say which ones this install holds.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(INCRELORA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/increlora)
install(TARGETS increlora EXPORT increloraTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY include/increlora DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT increloraTargets NAMESPACE increlora:: DESTINATION ${INCRELORA_CMAKE_DIR})

set(INCRELORA_INSTALLED_COMPONENTS "")
foreach(component models tasks)
  if(TARGET increlora_${component})
    string(SUBSTRING ${component} 0 1 _first)
    string(TOUPPER ${_first} _first)
    string(SUBSTRING ${component} 1 -1 _rest)
    set(_export increlora${_first}${_rest}Targets)
    install(TARGETS increlora_${component} EXPORT ${_export}
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    install(DIRECTORY ${component}/include/increlora DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
    install(EXPORT ${_export} NAMESPACE increlora:: DESTINATION ${INCRELORA_CMAKE_DIR})
    list(APPEND INCRELORA_INSTALLED_COMPONENTS ${component})
  endif()
endforeach()

configure_package_config_file(cmake/increloraConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/increloraConfig.cmake INSTALL_DESTINATION ${INCRELORA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/increloraConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/increloraConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/increloraConfigVersion.cmake DESTINATION ${INCRELORA_CMAKE_DIR})
# The models component links SentencePiece (privately, but a static library passes it on): its find module goes
# beside the config, which finds it for consumers.
if(TARGET increlora_models)
  install(FILES cmake/FindSentencePiece.cmake DESTINATION ${INCRELORA_CMAKE_DIR})
endif()
